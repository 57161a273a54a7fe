"""Deliver traffic for VIP:port to the service's healthy endpoints: nftables DNAT, or a userspace proxy.

Kernel data path (default): one nftables table, ``inet metalhorn``, replaced atomically in a single ``nft -f``
transaction whenever balancers or endpoint health change.  New connections to VIP:port are spread round-robin
(``numgen inc``) over the healthy endpoints of the VIP's family; established ones keep their conntrack entry.
Traffic DNATed to an endpoint on another node is masqueraded, so replies come back through this node (as
kube-proxy does for externalTrafficPolicy Cluster); forwarding to other nodes needs ``net.ipv4.ip_forward`` and
``net.ipv6.conf.all.forwarding``, which we check and warn about but never change.

Fallback where ``nft`` is missing: an asyncio TCP proxy per VIP:port.  The VIP becomes a local route on ``lo``
(``ip route add local``) so the kernel delivers to the proxy's socket, and ``arp_ignore=1`` keeps the kernel from
answering ARP for that route -- the responder alone answers.

Rules are installed on every node for every balancer it knows, owner or not: only the owner receives traffic for
a VIP, and a takeover then needs nothing but ARP.  Endpoints are health-checked with TCP connects; an endpoint is
down after ``fall`` failed checks and up again after ``rise`` good ones.  When every endpoint of a family is down,
all of them are used: a failing health check must not blackhole a service that might still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import ipaddress
import itertools
import logging
import pathlib
import shutil
import socket
import typing
from collections.abc import Iterable, Mapping

from metalhorn.common import errors
from metalhorn.common.logs import kv
from metalhorn.lb import model

log = logging.getLogger(__name__)

TABLE = "metalhorn"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Mode(enum.Enum):
    AUTO = "auto"
    NFT = "nft"
    PROXY = "proxy"


@dataclasses.dataclass(frozen=True)
class Balancer:
    """One service as delivery needs it: its VIPs, the TCP ports it serves, the endpoints behind them."""

    name: str
    ips: tuple[IPAddress, ...]
    ports: tuple[int, ...]
    endpoints: tuple[model.Endpoint, ...]


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    interval: float = 1.0
    timeout: float = 0.5
    fall: int = 2
    rise: int = 1


@dataclasses.dataclass
class Counters:
    health_check_failures: int = 0
    nft_applies: int = 0
    proxied_connections: int = 0


def _endpoint_key(e: model.Endpoint) -> tuple[int, int, int]:
    return (e.ip.version, int(e.ip), e.port)


def usable(
    endpoints: Iterable[model.Endpoint], healthy: Mapping[model.Endpoint, bool], version: int
) -> list[model.Endpoint]:
    """The endpoints of one IP family to send new connections to (all of them if none is healthy)."""
    same = sorted(e for e in endpoints if e.ip.version == version)
    up = [e for e in same if healthy.get(e, True)]
    return up or same


def render(balancers: Iterable[Balancer], healthy: Mapping[model.Endpoint, bool]) -> str:
    """The nft script that replaces table ``inet metalhorn`` with the rules for ``balancers`` (pure)."""
    dnat: list[str] = []
    masq: dict[int, set[str]] = {4: set(), 6: set()}
    for b in sorted(balancers, key=lambda b: b.name):
        for ip in b.ips:
            family = "ip" if ip.version == 4 else "ip6"
            targets = usable(b.endpoints, healthy, ip.version)
            if not targets:
                continue
            masq[ip.version].add(str(ip))
            for port in sorted(b.ports):
                entries = ", ".join(f"{i} : {e.ip} . {e.port}" for i, e in enumerate(targets))
                dnat.append(
                    f"    {family} daddr {ip} tcp dport {port} "
                    f"dnat {family} to numgen inc mod {len(targets)} map {{ {entries} }}"
                )
    post = [
        f"    ct original {'ip' if v == 4 else 'ip6'} daddr {{ {', '.join(sorted(ips))} }} masquerade"
        for v, ips in sorted(masq.items())
        if ips
    ]
    return "\n".join(
        [
            f"table inet {TABLE}",
            f"delete table inet {TABLE}",
            f"table inet {TABLE} {{",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            *dnat,
            "  }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *post,
            "  }",
            "}",
            "",
        ]
    )


async def _run(*argv: str, stdin: bytes | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise errors.Internal(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")


class Delivery:
    """Desired state in (:meth:`set_balancer` / :meth:`remove_balancer`); rules and proxies follow."""

    def __init__(self, *, mode: Mode = Mode.AUTO, health: HealthSettings = HealthSettings()) -> None:
        if mode is Mode.AUTO:
            mode = Mode.NFT if shutil.which("nft") else Mode.PROXY
        self.mode = mode
        self.health = health
        self.counters = Counters()
        self._balancers: dict[str, Balancer] = {}
        self._healthy: dict[model.Endpoint, bool] = {}
        self._streak: dict[model.Endpoint, int] = {}
        self._checkers: dict[model.Endpoint, asyncio.Task[None]] = {}
        self._dirty = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._proxies: dict[tuple[IPAddress, int], asyncio.Server] = {}
        self._local_routes: set[IPAddress] = set()
        self._rr = itertools.count()
        self.applied = asyncio.Event()  # set after each successful apply; tests and the daemon wait on it

    async def start(self) -> None:
        self._applier = asyncio.create_task(self._apply_loop(), name="delivery-apply")
        self._dirty.set()

    def set_balancer(
        self, name: str, ips: Iterable[IPAddress], ports: Iterable[int], endpoints: Iterable[model.Endpoint]
    ) -> None:
        b = Balancer(
            name,
            tuple(sorted(set(ips), key=str)),
            tuple(sorted(set(ports))),
            tuple(sorted(set(endpoints), key=_endpoint_key)),
        )
        if self._balancers.get(name) == b:
            return
        self._balancers[name] = b
        self._sync_checkers()
        self._dirty.set()

    def remove_balancer(self, name: str) -> None:
        if self._balancers.pop(name, None) is not None:
            self._sync_checkers()
            self._dirty.set()

    def endpoint_health(self) -> dict[model.Endpoint, bool]:
        return {e: self._healthy.get(e, True) for e in self._checkers}

    async def close(self) -> None:
        """Stop checks and proxies and remove everything this node installed."""
        for task in [*self._checkers.values(), *([self._applier] if self._applier else [])]:
            task.cancel()
        await asyncio.gather(
            *self._checkers.values(), *([self._applier] if self._applier else []), return_exceptions=True
        )
        self._checkers.clear()
        self._balancers.clear()
        try:
            if self.mode is Mode.NFT:
                await _run("nft", "-f", "-", stdin=f"table inet {TABLE}\ndelete table inet {TABLE}\n".encode())
            else:
                await self._apply_proxies()
        except errors.MetalhornError as exc:
            log.warning("delivery cleanup failed %s", kv(error=exc.message))

    # -- health ---------------------------------------------------------------------------------------------------

    def _sync_checkers(self) -> None:
        wanted = {e for b in self._balancers.values() for e in b.endpoints}
        for e in set(self._checkers) - wanted:
            self._checkers.pop(e).cancel()
            self._healthy.pop(e, None)
            self._streak.pop(e, None)
        for e in wanted - set(self._checkers):
            self._checkers[e] = asyncio.create_task(self._check_loop(e), name=f"health {e}")

    async def _check_loop(self, e: model.Endpoint) -> None:
        while True:
            ok = await self._check(e)
            self._record(e, ok)
            await asyncio.sleep(self.health.interval)

    async def _check(self, e: model.Endpoint) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(str(e.ip), e.port), self.health.timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _record(self, e: model.Endpoint, ok: bool) -> None:
        if not ok:
            self.counters.health_check_failures += 1
        streak = self._streak.get(e, 0)
        streak = max(streak, 0) + 1 if ok else min(streak, 0) - 1
        self._streak[e] = streak
        was = self._healthy.get(e, True)
        now = (streak >= self.health.rise) if not was else (streak > -self.health.fall)
        if now != was:
            log.info("endpoint %s %s", "up" if now else "down", kv(endpoint=e))
            self._healthy[e] = now
            self._dirty.set()

    # -- data path ------------------------------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                if self.mode is Mode.NFT:
                    await _run("nft", "-f", "-", stdin=render(self._balancers.values(), self._healthy).encode())
                    self.counters.nft_applies += 1
                else:
                    await self._apply_proxies()
            except errors.MetalhornError as exc:
                log.error("delivery apply failed %s", kv(error=exc.message))
                await asyncio.sleep(1.0)
                self._dirty.set()
                continue
            self._check_forwarding()
            self.applied.set()

    def _check_forwarding(self) -> None:
        for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
            try:
                if pathlib.Path(path).read_text().strip() == "0":
                    log.debug("forwarding off %s", kv(sysctl=path, effect="endpoints on other nodes unreachable"))
            except OSError:
                pass

    async def _apply_proxies(self) -> None:
        wanted = {(ip, port) for b in self._balancers.values() for ip in b.ips for port in b.ports}
        for key in set(self._proxies) - wanted:
            self._proxies.pop(key).close()
        ips = {ip for ip, _ in wanted}
        if ips and not self._local_routes:
            await _run("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        for ip in ips - self._local_routes:
            await _run("ip", f"-{ip.version}", "route", "replace", "local", str(ip), "dev", "lo", "table", "local")
            self._local_routes.add(ip)
        for ip in self._local_routes - ips:
            await _run("ip", f"-{ip.version}", "route", "del", "local", str(ip), "dev", "lo", "table", "local")
            self._local_routes.discard(ip)
        loop = asyncio.get_running_loop()
        for ip, port in sorted(wanted - set(self._proxies), key=str):
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: bind before the route exists
            try:
                sock.bind((str(ip), port))
            except OSError as exc:
                sock.close()
                raise errors.Internal(f"proxy cannot bind {ip} port {port}: {exc}") from exc
            self._proxies[(ip, port)] = await loop.create_server(
                functools.partial(_Inbound, self, ip, port), sock=sock, backlog=1024
            )

    def _pick(self, ip: IPAddress, port: int) -> list[model.Endpoint]:
        for b in self._balancers.values():
            if ip in b.ips and port in b.ports:
                targets = usable(b.endpoints, self._healthy, ip.version)
                if targets:
                    start = next(self._rr) % len(targets)
                    return targets[start:] + targets[:start]
        return []


class _Pipe(asyncio.Protocol):
    """One direction's receiver: forwards what it gets to ``peer`` with flow control in both directions."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Inbound(_Pipe):
    def __init__(self, delivery: Delivery, ip: IPAddress, port: int) -> None:
        super().__init__()
        self.delivery, self.ip, self.port = delivery, ip, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self.delivery.counters.proxied_connections += 1
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        for e in self.delivery._pick(self.ip, self.port):
            try:
                _, out = await asyncio.wait_for(
                    loop.create_connection(_Pipe, str(e.ip), e.port), self.delivery.health.timeout
                )
            except (OSError, TimeoutError):
                continue
            assert self.transport is not None
            out.peer, self.peer = self, out
            if self.pending and out.transport is not None:
                out.transport.writelines(self.pending)
                self.pending.clear()
            self.transport.resume_reading()
            return
        if self.transport is not None:
            self.transport.abort()
