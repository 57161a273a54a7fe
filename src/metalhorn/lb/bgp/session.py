"""One BGP session to one peer: the thin asyncio shell around the pure FSM (fsm.py) and codecs (messages/).

The shell only moves bytes and runs the FSM's actions; every protocol decision is the table's. What lives here:

* **Connections.** Active: ``connect()`` from a socket we build ourselves, so TCP-MD5 (RFC 2385, Linux
  ``TCP_MD5SIG``), the source address and the TTL are set before the SYN. Passive: a listener (speaker.py) hands
  accepted connections to ``accept()``. Collisions (RFC 4271 section 6.8) are resolved simply: a connection
  arriving while we have none (Idle, Connect, Active) is adopted; one arriving while ours is past OpenSent is
  refused, and the peer -- which runs the full section 6.8 procedure -- keeps ours.
* **TTL.** eBGP sends with TTL 1 unless ``ebgp_multihop`` (then 255), iBGP with the system default.
* **Time.** Timers are deadlines inside the FSM, measured on the injected clock. One asyncio timer wakes
  ``poll_timers()`` at the earliest deadline; tests with a fake clock advance it and call ``poll_timers()``.
* **Faults.** A malformed message raises BgpError in a decoder; the matching FSM *Err event sends the NOTIFICATION
  the decoder asked for and drops the connection. From Idle the session restarts after an exponential backoff
  (``backoff_initial`` doubling up to ``backoff_max``), reset once a session reaches Established. Nothing a peer
  sends can raise out of the protocol callbacks.
* **Desired state.** ``set(routes)`` replaces the wish; when Established the session sends only the difference
  to its Adj-RIB-Out (withdraw what went away, announce what is new or whose attributes changed), packed into as
  few UPDATEs as the attributes allow and written with one ``transport.write``. A ROUTE-REFRESH re-sends the
  Adj-RIB-Out of that family.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import struct
import typing
from collections.abc import Iterable

from metalhorn.common import clock as mh_clock
from metalhorn.common import errors as mh_errors
from metalhorn.common import logs
from metalhorn.lb.bgp import fsm, routes
from metalhorn.lb.bgp.messages import attributes, capabilities, codec, errors, header, nlri, packing, simple, update
from metalhorn.lb.bgp.messages import open_message as om

_log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TCP_MD5SIG = getattr(socket, "TCP_MD5SIG", 14)  # linux/tcp.h; Python's socket module does not export it
_MD5_KEY_MAX = 80  # TCP_MD5SIG_MAXKEYLEN
DEFAULT_LOCAL_PREF = 100
_E = fsm.Event
_S = fsm.State


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """Everything one session needs; built from a BGPPeer by the speaker (or by hand in tests and labs)."""

    name: str = ""
    peer_address: IPAddress
    peer_port: int = 179
    local_asn: int
    peer_asn: int | None  # None: dynamic -- any AS on the side ``internal`` says
    internal: bool
    router_id: ipaddress.IPv4Address
    hold_time: int = 90
    keepalive_time: int | None = None
    connect_retry_time: float = 5.0
    source_address: IPAddress | None = None
    password: str = dataclasses.field(default="", repr=False)
    ebgp_multihop: bool = False
    passive: bool = False  # never connect; only adopt connections the listener accepts
    next_hop_v4: ipaddress.IPv4Address | None = None  # None: our address on an IPv4 session
    next_hop_v6: ipaddress.IPv6Address | None = None  # None: our address on an IPv6 session
    backoff_initial: float = 1.0
    backoff_max: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStatus:
    name: str
    peer: str
    state: str
    prefixes_advertised: int
    established_at: float | None  # wall clock
    last_error: str
    updates_sent: int
    flaps: int


# -- sockets ------------------------------------------------------------------------------------------------------


def md5sig(peer: IPAddress, password: str) -> bytes:
    """``struct tcp_md5sig`` (linux/tcp.h) for ``peer``: sockaddr_storage(128), flags, prefixlen, keylen,
    ifindex, key[80]. An empty password removes the key."""
    key = password.encode()
    if len(key) > _MD5_KEY_MAX:
        raise mh_errors.InvalidArgument(f"TCP-MD5 password longer than {_MD5_KEY_MAX} bytes")
    if peer.version == 4:
        addr = struct.pack("=HH4s", socket.AF_INET, 0, peer.packed)
    else:
        addr = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, peer.packed, 0)
    return addr.ljust(128, b"\0") + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(_MD5_KEY_MAX, b"\0")


def set_md5(sock: socket.socket, peer: IPAddress, password: str) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(peer, password))


def set_ttl(sock: socket.socket, ttl: int) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def _family(address: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


# -- the connection protocol ----------------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One TCP connection; feeds its owner session. Created unowned by a listener, owned after ``accept``."""

    def __init__(self) -> None:
        self.owner: Session | None = None
        self._early: list[bytes] = []  # bytes that arrived before a session owned the connection
        self._lost = False
        self.transport: asyncio.Transport | None = None
        self.framer = header.Framer()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner._on_data(self, data)
        elif not self._lost:
            self._early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        if self.owner is not None:
            self.owner._on_lost(self)

    def attach(self, owner: Session) -> None:
        """Hand the connection to its session (after the FSM saw it come up): replay what came early."""
        self.owner = owner
        early, self._early = self._early, []
        if early:
            owner._on_data(self, b"".join(early))
        if self._lost and self.owner is owner:
            owner._on_lost(self)

    def peer_address(self) -> IPAddress | None:
        if self.transport is None:
            return None
        peer = self.transport.get_extra_info("peername")
        return ipaddress.ip_address(peer[0].split("%")[0]) if peer else None

    def local_address(self) -> IPAddress | None:
        if self.transport is None:
            return None
        local = self.transport.get_extra_info("sockname")
        return ipaddress.ip_address(local[0].split("%")[0]) if local else None

    def close(self) -> None:
        self.owner = None
        if self.transport is not None:
            self.transport.close()


# -- the session ----------------------------------------------------------------------------------------------


class Session:
    """A BGP session to one peer. ``start()`` in a running loop, ``set(routes)`` any time, ``await stop()``."""

    def __init__(self, config: SessionConfig, *, clock: mh_clock.Clock) -> None:
        self.config = config
        self._clock = clock
        self._fsm = fsm.Fsm(
            fsm.Config(
                hold_time=config.hold_time,
                keepalive_time=config.keepalive_time,
                connect_retry_time=config.connect_retry_time,
            )
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Connection | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._restart_at: float | None = None
        self._failures = 0
        self._stopping = False
        self._peer_open: om.Open | None = None
        self._families: frozenset[tuple[int, int]] = frozenset()
        self._four_octet = True
        self._desired: dict[nlri.Prefix, routes.Route] = {}
        self._sent: dict[nlri.Prefix, routes.Route] = {}
        self._next_hop4: ipaddress.IPv4Address | None = None
        self._next_hop6: ipaddress.IPv6Address | None = None
        self._established_at: float | None = None
        self._last_error = ""
        self._updates_sent = 0
        self._flaps = 0
        self._warned_v6 = False

    # -- public ----------------------------------------------------------------------------------------------

    @property
    def state(self) -> fsm.State:
        return self._fsm.state

    @property
    def advertised(self) -> frozenset[nlri.Prefix]:
        """Prefixes in the Adj-RIB-Out: sent to the peer on the current connection."""
        return frozenset(self._sent)

    @property
    def peer_open(self) -> om.Open | None:
        return self._peer_open

    def status(self) -> SessionStatus:
        config = self.config
        return SessionStatus(
            name=config.name,
            peer=f"{config.peer_address}:{config.peer_port}",
            state=self._fsm.state.value,
            prefixes_advertised=len(self._sent),
            established_at=self._established_at,
            last_error=self._last_error,
            updates_sent=self._updates_sent,
            flaps=self._flaps,
        )

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._handle(_E.MANUAL_START)

    async def stop(self, *, linger: float = 1.0) -> None:
        """ManualStop: Cease/Administrative Shutdown to an open peer, then close; waits for the close."""
        self._stopping = True
        conn = self._conn
        if self._fsm.state is not _S.IDLE:
            self._handle(_E.MANUAL_STOP)
        self._cancel_io()
        if conn is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), linger)

    def set(self, wanted: Iterable[routes.Route]) -> None:
        """Desired state: exactly these routes should be announced. Sends only the difference."""
        self._desired = {route.prefix: route for route in wanted}
        self._sync()

    def accept(self, conn: Connection) -> bool:
        """Adopt a connection the listener accepted from our peer; False means refused (the caller closes it)."""
        if self._stopping or self._loop is None:
            return False
        state = self._fsm.state
        if state in (_S.OPEN_SENT, _S.OPEN_CONFIRM, _S.ESTABLISHED):
            _log.info("bgp refusing second connection %s", logs.kv(peer=self.config.name, state=state.value))
            return False
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        self._apply_socket_options(conn)
        if state is _S.IDLE:
            self._restart_at = None
            self._handle(_E.AUTOMATIC_START, initiate=False)
        self._conn = conn
        self._handle(_E.TCP_CONNECTION_CONFIRMED)
        conn.attach(self)
        return True

    def poll_timers(self) -> None:
        """Handle every due timer (FSM timers and the restart backoff) at the clock's current time."""
        self._timer = None
        now = self._clock.monotonic()
        if self._restart_at is not None and self._restart_at <= now and not self._stopping:
            self._restart_at = None
            if self._fsm.state is _S.IDLE:
                self._handle(_E.AUTOMATIC_START)
        for event in self._fsm.poll(now):
            self._handle(event)
        self._reschedule()

    # -- the FSM driver --------------------------------------------------------------------------------------

    def _handle(
        self,
        event: fsm.Event,
        *,
        initiate: bool = True,
        peer_hold_time: int | None = None,
        notification: simple.Notification | None = None,
    ) -> None:
        before = self._fsm.state
        actions = self._fsm.handle(
            event, now=self._clock.monotonic(), peer_hold_time=peer_hold_time, notification=notification
        )
        for action in actions:
            self._run(action, initiate=initiate)
        after = self._fsm.state
        if after is not before:
            _log.info(
                "bgp state %s", logs.kv(peer=self.config.name, old=before.value, new=after.value, event=event.value)
            )
            if after is _S.ESTABLISHED:
                self._on_established()
            elif before is _S.ESTABLISHED:
                self._flaps += 1
                self._established_at = None
            if after is _S.IDLE and not self._stopping:
                delay = min(self.config.backoff_max, self.config.backoff_initial * 2**self._failures)
                self._failures += 1
                self._restart_at = self._clock.monotonic() + delay
        self._reschedule()

    def _run(self, action: fsm.Action, *, initiate: bool) -> None:
        if isinstance(action, fsm.InitiateConnection):
            if initiate and not self.config.passive:
                self._start_connect()
        elif isinstance(action, fsm.DropConnection):
            self._cancel_io()
        elif isinstance(action, fsm.ReleaseResources):
            self._sent.clear()
            self._peer_open = None
        elif isinstance(action, fsm.SendOpen):
            self._send_open()
        elif isinstance(action, fsm.SendKeepalive):
            self._write(codec.encode(simple.Keepalive()))
        elif isinstance(action, fsm.SendNotification):
            message = simple.Notification(action.code, action.subcode, action.data)
            if action.code != errors.ErrorCode.CEASE or not self._stopping:
                self._last_error = f"sent {message.describe()}"
            _log.warning("bgp notification sent %s", logs.kv(peer=self.config.name, error=message.describe()))
            self._write(codec.encode(message))
        # StartTimer / StopTimer: the Fsm keeps the deadlines; _reschedule reads them.

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is None:
            return
        deadlines = [d for d in (self._fsm.next_deadline(), self._restart_at) if d is not None]
        if not deadlines:
            return
        delay = max(0.0, min(deadlines) - self._clock.monotonic())
        self._timer = self._loop.call_later(delay, self.poll_timers)

    def _cancel_io(self) -> None:
        if self._connect_task is not None:
            if self._connect_task is not asyncio.current_task():
                self._connect_task.cancel()
            self._connect_task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._stopping and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- connecting ------------------------------------------------------------------------------------------

    def _ttl(self) -> int | None:
        if self.config.internal:
            return None
        return 255 if self.config.ebgp_multihop else 1

    def _apply_socket_options(self, conn: Connection) -> None:
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        ttl = self._ttl()
        if sock is not None and ttl is not None:
            with contextlib.suppress(OSError):
                set_ttl(sock, ttl)

    def _start_connect(self) -> None:
        assert self._loop is not None
        if self._connect_task is not None:
            self._connect_task.cancel()
        self._connect_task = self._loop.create_task(self._connect())

    def _socket(self) -> socket.socket:
        config = self.config
        sock = socket.socket(_family(config.peer_address), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if config.password:
                set_md5(sock, config.peer_address, config.password)
            ttl = self._ttl()
            if ttl is not None:
                set_ttl(sock, ttl)
            if config.source_address is not None:
                sock.bind((str(config.source_address), 0))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _connect(self) -> None:
        assert self._loop is not None
        config = self.config
        me = asyncio.current_task()
        sock: socket.socket | None = None
        try:
            sock = self._socket()
            await self._loop.sock_connect(sock, (str(config.peer_address), config.peer_port))
            _, conn = await self._loop.create_connection(Connection, sock=sock)
            sock = None
        except OSError as exc:
            if sock is not None:
                sock.close()
            if self._connect_task is me:
                self._connect_task = None
                self._last_error = f"connect: {exc.strerror or exc}"
                _log.info("bgp connect failed %s", logs.kv(peer=config.name, error=exc.strerror or exc))
                if self._fsm.state in (_S.CONNECT, _S.ACTIVE):
                    self._handle(_E.TCP_CONNECTION_FAILS)
            return
        except asyncio.CancelledError:
            if sock is not None:
                sock.close()
            raise
        if self._connect_task is not me or self._fsm.state not in (_S.CONNECT, _S.ACTIVE):
            conn.close()
            return
        self._connect_task = None
        self._conn = conn
        self._handle(_E.TCP_CR_ACKED)
        conn.attach(self)

    # -- receiving -------------------------------------------------------------------------------------------

    def _on_lost(self, conn: Connection) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        conn.owner = None
        if self._fsm.state not in (_S.IDLE, _S.CONNECT, _S.ACTIVE):
            self._last_error = self._last_error or "connection lost"
            self._handle(_E.TCP_CONNECTION_FAILS)

    def _on_data(self, conn: Connection, data: bytes) -> None:
        try:
            raws = conn.framer.feed(data)
        except errors.BgpError as exc:
            self._fault(exc)
            return
        for raw in raws:
            if conn is not self._conn:
                return
            try:
                self._on_message(raw)
            except errors.BgpError as exc:
                self._fault(exc)
                return

    def _fault(self, exc: errors.BgpError) -> None:
        """A decoder refused the peer's bytes: the matching *Err event sends the NOTIFICATION it asked for."""
        self._last_error = f"peer sent bad message: {exc.reason}"
        _log.warning("bgp bad message %s", logs.kv(peer=self.config.name, error=exc.message))
        if exc.bgp_code == errors.ErrorCode.MESSAGE_HEADER:
            event = _E.BGP_HEADER_ERR
        elif exc.bgp_code == errors.ErrorCode.OPEN_MESSAGE:
            event = _E.BGP_OPEN_MSG_ERR
        else:
            event = _E.UPDATE_MSG_ERR
        self._handle(event, notification=simple.Notification.from_error(exc))

    def _on_message(self, raw: header.RawMessage) -> None:
        kind = raw.type
        if kind == header.MessageType.KEEPALIVE:
            simple.decode_keepalive(raw.body)
            self._handle(_E.KEEPALIVE_MSG)
        elif kind == header.MessageType.UPDATE:
            update.decode_body(raw.body, four_octet_as=self._four_octet)  # routes from the peer are not used
            self._handle(_E.UPDATE_MSG)
        elif kind == header.MessageType.OPEN:
            self._on_open(om.decode_body(raw.body))
        elif kind == header.MessageType.NOTIFICATION:
            message = simple.decode_notification(raw.body)
            self._last_error = f"peer sent {message.describe()}"
            _log.warning("bgp notification received %s", logs.kv(peer=self.config.name, error=message.describe()))
            version = message.code == errors.ErrorCode.OPEN_MESSAGE and message.subcode == 1
            self._handle(_E.NOTIF_MSG_VER_ERR if version else _E.NOTIF_MSG)
        else:
            refresh = simple.decode_route_refresh(raw.body)
            self._handle(_E.ROUTE_REFRESH_MSG)
            if self._fsm.state is _S.ESTABLISHED:
                self._refresh(refresh.afi, refresh.safi)

    def _on_open(self, message: om.Open) -> None:
        config = self.config
        if self._fsm.state is not _S.OPEN_SENT:
            self._handle(_E.BGP_OPEN, peer_hold_time=message.hold_time)  # an FSM error in any other state
            return
        om.check_peer(message, expected_asn=config.peer_asn, local_asn=config.local_asn, local_bgp_id=config.router_id)
        if config.peer_asn is None and (message.asn == config.local_asn) != config.internal:
            raise errors.open_error(
                errors.OpenSubcode.BAD_PEER_AS,
                reason=f"peer AS {message.asn} is not {'internal' if config.internal else 'external'}",
            )
        self._peer_open = message
        self._four_octet = message.four_octet_as
        offered = message.families() or frozenset({(nlri.Afi.IPV4, nlri.Safi.UNICAST)})
        self._families = offered & nlri.SUPPORTED_FAMILIES
        self._handle(_E.BGP_OPEN, peer_hold_time=message.hold_time)

    # -- sending ---------------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(data)

    def _send_open(self) -> None:
        config = self.config
        message = om.Open.build(
            asn=config.local_asn,
            hold_time=config.hold_time,
            bgp_id=config.router_id,
            capabilities=(
                capabilities.Multiprotocol(nlri.Afi.IPV4, nlri.Safi.UNICAST),
                capabilities.Multiprotocol(nlri.Afi.IPV6, nlri.Safi.UNICAST),
                capabilities.RouteRefresh(),
            ),
        )
        self._write(codec.encode(message))

    def _on_established(self) -> None:
        self._failures = 0
        self._established_at = self._clock.wall()
        self._last_error = ""
        local = self._conn.local_address() if self._conn is not None else None
        config = self.config
        self._next_hop4 = config.next_hop_v4 or (local if isinstance(local, ipaddress.IPv4Address) else None)
        self._next_hop6 = config.next_hop_v6 or (local if isinstance(local, ipaddress.IPv6Address) else None)
        self._sent.clear()
        self._sync()
        eor = b"".join(
            codec.encode(update.end_of_rib(afi, safi), four_octet_as=self._four_octet)
            for afi, safi in sorted(self._families)
        )
        self._write(eor)

    def _sendable(self) -> dict[nlri.Prefix, routes.Route]:
        """The desired routes this session can carry: negotiated family, and a next hop for it."""
        v4 = (nlri.Afi.IPV4, nlri.Safi.UNICAST) in self._families and self._next_hop4 is not None
        v6 = (nlri.Afi.IPV6, nlri.Safi.UNICAST) in self._families and self._next_hop6 is not None
        if not v6 and not self._warned_v6 and any(p.version == 6 for p in self._desired):
            self._warned_v6 = True
            _log.warning("bgp cannot announce IPv6 %s", logs.kv(peer=self.config.name, reason="no family/next hop"))
        return {p: r for p, r in self._desired.items() if (v4 if p.version == 4 else v6)}

    def _attributes(self, route: routes.Route) -> attributes.PathAttributes:
        config = self.config
        return attributes.PathAttributes(
            origin=attributes.Origin.IGP,
            as_path=attributes.as_sequence() if config.internal else attributes.as_sequence(config.local_asn),
            next_hop=self._next_hop4,
            local_pref=(route.local_pref or DEFAULT_LOCAL_PREF) if config.internal else None,
            communities=route.communities,
            large_communities=route.large_communities,
        )

    def _updates(self, announce: Iterable[routes.Route], withdraw: Iterable[nlri.Prefix]) -> bytes:
        groups: dict[object, list[routes.Route]] = {}
        for route in announce:
            groups.setdefault(route.attribute_key(), []).append(route)
        hops6 = (self._next_hop6,) if self._next_hop6 is not None else ()
        messages = packing.build_updates(
            attributes_=attributes.PathAttributes(), withdraw=withdraw, four_octet_as=self._four_octet
        )
        for members in groups.values():
            messages += packing.build_updates(
                attributes_=self._attributes(members[0]),
                announce=[r.prefix for r in members],
                ipv6_next_hops=hops6,
                four_octet_as=self._four_octet,
            )
        self._updates_sent += len(messages)
        return b"".join(codec.encode(m, four_octet_as=self._four_octet) for m in messages)

    def _sync(self) -> None:
        if self._fsm.state is not _S.ESTABLISHED or self._conn is None:
            return
        wanted = self._sendable()
        sent = self._sent
        withdraw = [prefix for prefix in sent if prefix not in wanted]
        announce = [route for prefix, route in wanted.items() if sent.get(prefix) != route]
        if not withdraw and not announce:
            return
        data = self._updates(announce, withdraw)
        self._sent = dict(wanted)
        _log.info("bgp update %s", logs.kv(peer=self.config.name, announce=len(announce), withdraw=len(withdraw)))
        self._write(data)

    def _refresh(self, afi: int, safi: int) -> None:
        """RFC 2918 section 4: re-send the Adj-RIB-Out of that family."""
        if (afi, safi) not in self._families:
            return
        version = 4 if afi == nlri.Afi.IPV4 else 6
        again = [route for prefix, route in self._sent.items() if prefix.version == version]
        self._write(self._updates(again, ()))
