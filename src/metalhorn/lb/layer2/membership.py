"""Who is alive: direct UDP probes between agents, fast enough for sub-second failover.

Every agent pings every peer each ``interval`` and answers pings with acks.  A peer is healthy while anything
from it (a ping or an ack) saying "ready" arrived within ``timeout`` (default three intervals); every agent runs
the same schedule, so a node that dies is unhealthy for everyone within the same window of ``timeout`` plus one tick --
0.4 s with the defaults, against memberlist's ~10 s in MetalLB.  This node counts itself healthy.

An agent that just started has heard nobody yet; it reports :attr:`MembershipState.ready` False for one
``timeout`` window, so the announcer claims nothing until its view is real (otherwise a restarting node would
believe it is alone and briefly answer for every IP).  Its probes say so (the READY flag), and peers do not count
it healthy until they do: the IPs it will win stay with their current owners until it is ready to take them, and a
node that restarts faster than the timeout is noticed at its first probe.

:class:`MembershipState` is the sans-IO core (bytes and times in, bytes out), tested with a fake clock;
:class:`Membership` is the asyncio shell that owns the UDP socket and the timer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Mapping

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors
from metalhorn.common.logs import kv

log = logging.getLogger(__name__)

MAGIC = b"MHL2"
VERSION = 1
HEADER = struct.Struct("!4sBBBIB")  # magic, version, kind, flags, sequence, name length; the name follows
FLAG_READY = 0x01
DEFAULT_INTERVAL = 0.1
MISSED_PROBES = 3

Address = tuple[str, int]


class Kind(enum.IntEnum):
    PING = 1
    ACK = 2


@dataclasses.dataclass(frozen=True)
class Probe:
    kind: Kind
    seq: int
    node: str
    ready: bool = True  # the sender's view is settled (past its warm-up); only ready peers count as healthy


def encode(probe: Probe) -> bytes:
    name = probe.node.encode()
    if len(name) > 255:
        raise errors.InvalidArgument(f"node name {probe.node!r} is longer than 255 bytes")
    flags = FLAG_READY if probe.ready else 0
    return HEADER.pack(MAGIC, VERSION, probe.kind, flags, probe.seq & 0xFFFFFFFF, len(name)) + name


def decode(data: bytes) -> Probe:
    if len(data) < HEADER.size:
        raise errors.ProtocolError(f"probe of {len(data)} bytes is shorter than {HEADER.size}")
    magic, version, kind, flags, seq, size = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise errors.ProtocolError(f"not a metalhorn probe (magic {magic!r}, version {version})")
    if kind not in (Kind.PING, Kind.ACK) or len(data) != HEADER.size + size:
        raise errors.ProtocolError(f"bad probe kind {kind} or length {len(data)}")
    try:
        node = data[HEADER.size :].decode()
    except UnicodeDecodeError:
        raise errors.ProtocolError("probe node name is not UTF-8") from None
    return Probe(Kind(kind), seq, node, bool(flags & FLAG_READY))


@dataclasses.dataclass(frozen=True)
class Settings:
    interval: float = DEFAULT_INTERVAL
    timeout: float | None = None  # None: MISSED_PROBES * interval

    @property
    def window(self) -> float:
        return self.timeout if self.timeout is not None else MISSED_PROBES * self.interval


class MembershipState:
    """The sans-IO core: when to ping whom, what to answer, who counts as healthy at a given time."""

    def __init__(self, node: str, *, now: float, settings: Settings = Settings()) -> None:
        if settings.interval <= 0 or settings.window <= settings.interval:
            raise errors.InvalidArgument("probe timeout must be longer than the probe interval, both positive")
        self.node = node
        self.settings = settings
        self._started = now
        self._peers: dict[str, Address] = {}
        self._seen: dict[str, float] = {}
        self._seq = 0
        self._next_ping = now

    def set_peers(self, peers: Mapping[str, Address]) -> None:
        """The whole peer list (this node may be in it; it is skipped).  New peers start unheard."""
        self._peers = {name: addr for name, addr in peers.items() if name != self.node}
        self._seen = {name: t for name, t in self._seen.items() if name in self._peers}

    @property
    def peers(self) -> dict[str, Address]:
        return dict(self._peers)

    def ready(self, now: float) -> bool:
        return now - self._started >= self.settings.window

    def healthy(self, now: float) -> frozenset[str]:
        window = self.settings.window
        alive = {name for name, seen in self._seen.items() if now - seen < window}
        return frozenset(alive | {self.node})

    def next_deadline(self) -> float:
        return self._next_ping

    def due(self, now: float) -> list[tuple[Address, bytes]]:
        """Pings to send now (one per peer, every interval); empty between intervals."""
        if now < self._next_ping:
            return []
        self._seq += 1
        # Keep the schedule without drifting, but never try to catch up a burst after a stall.
        self._next_ping += self.settings.interval
        if self._next_ping <= now:
            self._next_ping = now + self.settings.interval
        data = encode(Probe(Kind.PING, self._seq, self.node, self.ready(now)))
        return [(addr, data) for addr in self._peers.values()]

    def receive(self, data: bytes, now: float) -> bytes | None:
        """Take in one datagram; return the ack to send back to its source, if any.  Junk raises ProtocolError."""
        probe = decode(data)
        if probe.node not in self._peers:
            return None  # not (or no longer) a peer: neither counted nor answered
        if probe.ready:
            self._seen[probe.node] = now
        else:  # restarted and still warming up: not an owner yet, whatever it was a moment ago
            self._seen.pop(probe.node, None)
        if probe.kind is Kind.PING:
            return encode(Probe(Kind.ACK, probe.seq, self.node, self.ready(now)))
        return None


class Membership(asyncio.DatagramProtocol):
    """UDP shell around :class:`MembershipState`; calls ``on_change(healthy)`` whenever the healthy set changes.

    ``on_tick`` runs on every timer tick as well, for callers that watch other things at the same pace (the
    announcer checks link state there).
    """

    def __init__(
        self,
        node: str,
        *,
        clock: clock_mod.Clock | None = None,
        settings: Settings = Settings(),
        on_change: Callable[[frozenset[str]], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock or clock_mod.SystemClock()
        self.state = MembershipState(node, now=self.clock.monotonic(), settings=settings)
        self.on_change = on_change
        self.on_tick = on_tick
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last: frozenset[str] | None = None
        self.local_address: Address | None = None

    async def start(self, listen: Address) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=listen, family=family)
        except OSError as exc:
            raise errors.InvalidArgument(f"membership cannot listen on {listen[0]}:{listen[1]}: {exc}") from exc
        self._transport = transport
        self.local_address = transport.get_extra_info("sockname")[:2]
        self._tick()

    def set_peers(self, peers: Mapping[str, Address] | Iterable[tuple[str, Address]]) -> None:
        self.state.set_peers(dict(peers))
        self._report()

    def healthy(self) -> frozenset[str]:
        return self.state.healthy(self.clock.monotonic())

    def ready(self) -> bool:
        return self.state.ready(self.clock.monotonic())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # asyncio.DatagramProtocol --------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            reply = self.state.receive(data, self.clock.monotonic())
        except errors.ProtocolError as exc:
            log.debug("bad probe %s", kv(source=addr[0], error=exc.message))
            return
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)
        self._report()

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable from a dead peer: expected
        log.debug("probe error %s", kv(error=exc))

    # -----------------------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._transport is None:
            return
        now = self.clock.monotonic()
        for addr, data in self.state.due(now):
            self._transport.sendto(data, addr)
        self._report()
        if self.on_tick is not None:
            self.on_tick()
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.state.next_deadline() - self.clock.monotonic())
        self._timer = loop.call_later(min(delay, self.state.settings.interval), self._tick)

    def _report(self) -> None:
        healthy = self.healthy()
        if healthy != self._last:
            if self._last is not None:
                log.info(
                    "membership %s",
                    kv(
                        node=self.state.node,
                        healthy=",".join(sorted(healthy)),
                        joined=",".join(sorted(healthy - self._last)) or "-",
                        lost=",".join(sorted(self._last - healthy)) or "-",
                    ),
                )
            self._last = healthy
            if self.on_change is not None:
                self.on_change(healthy)
