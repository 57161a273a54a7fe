"""Answer ARP and neighbour solicitations for the IPs this node owns, on one interface (AF_PACKET).

The service IPs are never configured on an interface (as in MetalLB), so the kernel stays silent about them and
this responder is the only thing on the node that claims them.  One raw socket per interface, with a classic BPF
filter so only ARP and ICMPv6 neighbour solicitations ever reach Python; the socket joins all-multicast so
solicitations sent to solicited-node groups arrive although the kernel never joined those groups.

``set_owned(ips)`` is desired state: an IP that leaves the set is not answered from the next frame on (the set is
consulted per frame, nothing is queued), and an IP that enters it is announced at once with gratuitous ARP
(request and reply) or an unsolicited NA, repeated a few times because a single broadcast can be lost.
The decisions themselves live in :mod:`metalhorn.lb.layer2.frames` (pure).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable

from metalhorn.common import errors
from metalhorn.common.logs import kv
from metalhorn.lb.layer2 import frames

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_OUTGOING = 4
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IFF_RUNNING = 0x40
READ_BATCH = 64

# Classic BPF: accept ARP, and IPv6 whose next header is ICMPv6 (58) with type 135 (neighbour solicitation).
_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]                 ethertype
    (0x15, 5, 0, frames.ETH_P_ARP),  # jeq ARP -> accept
    (0x15, 0, 5, frames.ETH_P_IPV6),  # jne IPv6 -> drop
    (0x30, 0, 0, 20),  # ldb [20]                 IPv6 next header
    (0x15, 0, 3, frames.IPPROTO_ICMPV6),
    (0x30, 0, 0, 54),  # ldb [54]                 ICMPv6 type
    (0x15, 0, 1, frames.ICMPV6_NS),
    (0x06, 0, 0, 0x40000),  # accept
    (0x06, 0, 0, 0),  # drop
)
# Announcements are repeated at these delays (seconds) after a takeover: a lost broadcast costs one period.
ANNOUNCE_REPEATS = (0.0, 0.25, 1.0)


@dataclasses.dataclass
class Counters:
    """What a responder did; the speaker's metrics read these."""

    requests_answered: int = 0
    announcements_sent: int = 0
    takeovers: int = 0
    malformed: int = 0


def link_is_up(interface: str) -> bool:
    """Administratively up and with carrier (IFF_UP and IFF_RUNNING), asked of the kernel by ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", interface.encode(), 0))
        except OSError:
            return False
    flags: int = struct.unpack_from("16sH", raw)[1]
    return bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)


def _attach_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *insn) for insn in _FILTER)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(_FILTER), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Responder:
    """ARP / NDP answers and takeover announcements for one interface; build with :meth:`open`."""

    def __init__(self, interface: str, sock: socket.socket, mac: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.interface = interface
        self.mac = mac
        self.counters = Counters()
        self._sock = sock
        self._loop = loop
        self._owned: frozenset[IPAddress] = frozenset()
        self._repeats: dict[IPAddress, list[asyncio.TimerHandle]] = {}
        self._closed = False
        loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def open(cls, interface: str) -> Responder:
        """Open the raw socket on ``interface`` (needs CAP_NET_RAW); raise NotFound if there is no such link."""
        loop = asyncio.get_running_loop()
        # Protocol 0 receives nothing until bind, so no unfiltered frame is ever queued.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            _attach_filter(sock)
            sock.bind((interface, ETH_P_ALL))
            index = socket.if_nametoindex(interface)
            mreq = struct.pack("iHH8s", index, PACKET_MR_ALLMULTI, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
            mac = sock.getsockname()[4][:6]
        except OSError as exc:
            sock.close()
            if isinstance(exc, PermissionError):
                raise errors.InvalidArgument(f"raw socket on {interface}: needs root or CAP_NET_RAW") from exc
            raise errors.NotFound(f"interface {interface}: {exc.strerror or exc}") from exc
        log.info("responder open %s", kv(interface=interface, mac=frames.mac_text(mac)))
        return cls(interface, sock, mac, loop)

    @property
    def owned(self) -> frozenset[IPAddress]:
        return self._owned

    def set_owned(self, ips: Iterable[IPAddress]) -> None:
        """Answer for exactly ``ips`` from now on; announce the ones that are new."""
        new = frozenset(ips)
        gained, lost = new - self._owned, self._owned - new
        self._owned = new  # lost IPs go unanswered from the very next frame
        for ip in lost:
            for handle in self._repeats.pop(ip, ()):
                handle.cancel()
            log.info("release %s", kv(vip=ip, interface=self.interface))
        for ip in sorted(gained, key=lambda a: (a.version, int(a))):
            self.counters.takeovers += 1
            log.info("takeover %s", kv(vip=ip, interface=self.interface))
            self._repeats[ip] = [self._loop.call_later(d, self._announce, ip) for d in ANNOUNCE_REPEATS]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handles in self._repeats.values():
            for handle in handles:
                handle.cancel()
        self._repeats.clear()
        self._owned = frozenset()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    # -----------------------------------------------------------------------------------------------------------

    def _announce(self, ip: IPAddress) -> None:
        if ip not in self._owned or self._closed:
            return
        for frame in frames.announcements(self.mac, ip):
            if self._send(frames.encode(frame)):
                self.counters.announcements_sent += 1

    def _readable(self) -> None:
        for _ in range(READ_BATCH):
            try:
                data, addr = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ENETDOWN while the link is down: the next frame will tell
                log.debug("receive failed %s", kv(interface=self.interface, error=exc))
                return
            if addr[2] == PACKET_OUTGOING or not self._owned:
                continue
            try:
                frame = frames.decode(data)
            except errors.ProtocolError:
                self.counters.malformed += 1
                continue
            answer = frames.reply_to(frame, mac=self.mac, owned=self._owned)
            if answer is not None and self._send(frames.encode(answer)):
                self.counters.requests_answered += 1

    def _send(self, data: bytes) -> bool:
        try:
            self._sock.send(data)
        except OSError as exc:  # link down or queue full: the requester asks again, announcements repeat
            log.debug("send failed %s", kv(interface=self.interface, error=exc))
            return False
        return True
