"""A node's BGP speaker: one Session per BGPPeer that selects this node, fed the routes this node must announce.

An agent drives it with desired state only:

    speaker = Speaker(node="n1", router_id=..., clock=clock.SystemClock())
    await speaker.start()                            # the listener, when ``listen_port`` is set
    speaker.set_config(lb.bgp_peers, passwords={})   # sessions come and go; a changed peer restarts its session
    speaker.set_advertisements(lb, vips)             # each session gets routes.routes_for_peer(...)
    speaker.status()                                 # per peer: state, prefixes advertised, last error
    await speaker.close()                            # Cease to every peer

Withdrawal needs no call of its own: a VIP missing from the next ``set_advertisements`` (service gone, node no
longer eligible), a BGPAdvertisement that no longer selects this node, or changed node labels all shrink the
routes a session holds, and the session withdraws the difference. Peers given by ``interface`` (unnumbered BGP)
are not supported yet and are skipped with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping

from metalhorn.common import clock as mh_clock
from metalhorn.common import logs
from metalhorn.lb import config as lb_config
from metalhorn.lb.bgp import routes, session

_log = logging.getLogger(__name__)
DEFAULT_HOLD_TIME = 90
DEFAULT_CONNECT_TIME = 5.0


def session_config(
    peer: lb_config.BGPPeer,
    *,
    router_id: ipaddress.IPv4Address,
    password: str = "",
    passive: bool = False,
    next_hop_v4: ipaddress.IPv4Address | None = None,
    next_hop_v6: ipaddress.IPv6Address | None = None,
) -> session.SessionConfig | None:
    """The SessionConfig for a BGPPeer (None for unnumbered peers, which need an interface's link-local)."""
    if peer.peer_address is None:
        return None
    return session.SessionConfig(
        name=peer.meta.name,
        peer_address=peer.peer_address,
        peer_port=peer.peer_port,
        local_asn=peer.my_asn,
        peer_asn=peer.peer_asn or None,
        internal=routes.is_internal(peer),
        router_id=peer.router_id or router_id,
        hold_time=int(peer.hold_time) if peer.hold_time is not None else DEFAULT_HOLD_TIME,
        keepalive_time=max(1, int(peer.keepalive_time)) if peer.keepalive_time else None,
        connect_retry_time=peer.connect_time or DEFAULT_CONNECT_TIME,
        source_address=peer.source_address,
        password=password or peer.password,
        ebgp_multihop=peer.ebgp_multi_hop,
        passive=passive,
        next_hop_v4=next_hop_v4,
        next_hop_v6=next_hop_v6,
    )


class _Incoming(session.Connection):
    """A connection accepted by the listener: handed to the session of its peer address, else closed."""

    def __init__(self, speaker: Speaker) -> None:
        super().__init__()
        self._speaker = speaker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._speaker._dispatch(self)


@dataclasses.dataclass
class _Peer:
    peer: lb_config.BGPPeer
    config: session.SessionConfig
    session: session.Session


class Speaker:
    def __init__(
        self,
        *,
        node: str,
        router_id: ipaddress.IPv4Address,
        clock: mh_clock.Clock,
        labels: Mapping[str, str] | None = None,
        next_hop_v4: ipaddress.IPv4Address | None = None,
        next_hop_v6: ipaddress.IPv6Address | None = None,
        listen_port: int | None = None,
        passive: bool = False,
    ) -> None:
        self.node = node
        self.router_id = router_id
        self._clock = clock
        self._labels = routes.node_labels(node, labels)
        self._next_hop_v4 = next_hop_v4
        self._next_hop_v6 = next_hop_v6
        self._listen_port = listen_port
        self._passive = passive
        self._peers: dict[str, _Peer] = {}
        self._lb = lb_config.LbConfig()
        self._vips: tuple[routes.Vip, ...] = ()
        self._servers: list[asyncio.Server] = []
        self._listen_socks: list[socket.socket] = []
        self._stopping: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the listener (when ``listen_port`` is set): port 179 by default, both families."""
        if self._listen_port is None:
            return
        loop = asyncio.get_running_loop()
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, self._listen_port))
            except OSError as exc:
                sock.close()
                _log.warning("bgp listen failed %s", logs.kv(family=family.name, error=exc.strerror or exc))
                continue
            sock.setblocking(False)
            sock.listen(64)
            self._listen_socks.append(sock)
            self._servers.append(await loop.create_server(lambda: _Incoming(self), sock=sock))
        for item in self._peers.values():
            self._set_listen_key(item.config)

    @property
    def listen_ports(self) -> list[int]:
        return [int(sock.getsockname()[1]) for sock in self._listen_socks]

    async def close(self) -> None:
        for name in list(self._peers):
            self._remove(name)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        for server in self._servers:
            server.close()
        self._servers.clear()
        self._listen_socks.clear()

    # -- desired state ---------------------------------------------------------------------------------------

    def set_config(self, peers: Iterable[lb_config.BGPPeer], *, passwords: Mapping[str, str] | None = None) -> None:
        """The BGPPeers of the cluster; only those selecting this node get a session. ``passwords`` maps a peer
        name to the password its ``passwordSecret`` resolved to (the caller reads secrets)."""
        wanted: dict[str, tuple[lb_config.BGPPeer, session.SessionConfig]] = {}
        for peer in peers:
            if not routes.peer_selects_node(peer, self._labels):
                continue
            built = session_config(
                peer,
                router_id=self.router_id,
                password=(passwords or {}).get(peer.meta.name, ""),
                passive=self._passive,
                next_hop_v4=self._next_hop_v4,
                next_hop_v6=self._next_hop_v6,
            )
            if built is None:
                _log.warning("bgp peer skipped %s", logs.kv(peer=peer.meta.name, reason="no peerAddress"))
                continue
            wanted[peer.meta.name] = (peer, built)
        for name in list(self._peers):
            if name not in wanted or wanted[name][1] != self._peers[name].config:
                self._remove(name)
        for name, (peer, built) in wanted.items():
            current = self._peers.get(name)
            if current is not None:
                current.peer = peer
                continue
            item = _Peer(peer, built, session.Session(built, clock=self._clock))
            self._peers[name] = item
            self._set_listen_key(built)
            item.session.set(self._routes(peer))
            item.session.start()
            _log.info("bgp peer added %s", logs.kv(peer=name, address=built.peer_address, node=self.node))

    def set_advertisements(self, config: lb_config.LbConfig, vips: Iterable[routes.Vip]) -> None:
        """The LbConfig (BGPAdvertisements, pools) and every VIP this node must announce now."""
        self._lb = config
        self._vips = tuple(vips)
        self._push()

    def set_node_labels(self, labels: Mapping[str, str]) -> None:
        """New node labels may change which advertisements (and peers: call set_config again) apply."""
        self._labels = routes.node_labels(self.node, labels)
        self._push()

    # -- status ----------------------------------------------------------------------------------------------

    def status(self) -> tuple[session.SessionStatus, ...]:
        return tuple(item.session.status() for _, item in sorted(self._peers.items()))

    def sessions(self) -> dict[str, session.Session]:
        return {name: item.session for name, item in self._peers.items()}

    # -- internals -------------------------------------------------------------------------------------------

    def _routes(self, peer: lb_config.BGPPeer) -> tuple[routes.Route, ...]:
        return routes.routes_for_peer(self._lb, peer, labels=self._labels, vips=self._vips)

    def _push(self) -> None:
        for item in self._peers.values():
            item.session.set(self._routes(item.peer))

    def _remove(self, name: str) -> None:
        item = self._peers.pop(name)
        if item.config.password:
            self._set_listen_key(item.config, remove=True)
        task = asyncio.get_running_loop().create_task(item.session.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        _log.info("bgp peer removed %s", logs.kv(peer=name, node=self.node))

    def _set_listen_key(self, config: session.SessionConfig, *, remove: bool = False) -> None:
        if not config.password:
            return
        family = socket.AF_INET if config.peer_address.version == 4 else socket.AF_INET6
        for sock in self._listen_socks:
            if sock.family == family:
                try:
                    session.set_md5(sock, config.peer_address, "" if remove else config.password)
                except OSError as exc:
                    _log.warning("bgp md5 key %s", logs.kv(peer=config.name, error=exc.strerror or exc))

    def _dispatch(self, conn: session.Connection) -> None:
        address = conn.peer_address()
        for item in self._peers.values():
            if item.config.peer_address == address and item.session.accept(conn):
                return
        _log.info("bgp connection refused %s", logs.kv(peer=address))
        with contextlib.suppress(Exception):
            conn.close()
