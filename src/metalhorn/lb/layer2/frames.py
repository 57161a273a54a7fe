"""Ethernet frames for layer-2 announcements: ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861), sans-IO.

Pure functions of bytes and values, so the responder's whole decision -- is this a question about an IP we
own, and what exactly do we answer -- is tested without sockets or root.  :func:`decode` turns a frame into a
:class:`Frame` whose ``packet`` is an :class:`Arp`, :class:`NeighborSolicitation` or
:class:`NeighborAdvertisement` (None for anything else); :func:`encode` is its inverse.  Malformed ARP or
neighbour discovery raises :class:`metalhorn.common.errors.ProtocolError`; the responder drops such frames.

What we send:
- an ARP reply to a request for an owned IP (RFC 826), unicast to the asker;
- a neighbour advertisement to a solicitation for an owned IP (RFC 4861 section 7.2.4), Solicited set and
  Override set -- the IP belongs to exactly one node, and Override lets a client replace a stale entry at once;
- on takeover, gratuitous ARP in both forms (request and reply, RFC 5227 section 3: hosts differ in which form
  updates their cache) and an unsolicited neighbour advertisement to all-nodes (RFC 4861 section 7.2.6).

IPv6 packets with extension headers before ICMPv6 are not neighbour discovery for us (RFC 4861 messages are
sent without them) and decode as ``packet=None``.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from collections.abc import Container

from metalhorn.common import errors

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_HEADER = struct.Struct("!6s6sH")
ETH_MIN_FRAME = 60  # without the FCS; shorter frames are padded with zeros (IEEE 802.3)
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_HTYPE_ETHERNET = 1

IPV6_HEADER = struct.Struct("!IHBB16s16s")
IPPROTO_ICMPV6 = 58
ND_HOP_LIMIT = 255  # RFC 4861 section 7.1: anything else may have been forwarded and is invalid
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ICMPV6_NS = 135
ICMPV6_NA = 136
ND_HEADER = struct.Struct("!BBHI16s")  # type, code, checksum, flags/reserved, target
OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000


class ArpOp(enum.IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclasses.dataclass(frozen=True)
class Arp:
    """An Ethernet/IPv4 ARP packet (RFC 826)."""

    op: int
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True)
class NeighborSolicitation:
    """RFC 4861 section 4.3, with the IPv6 header fields a reply needs."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    target: ipaddress.IPv6Address
    source_lladdr: bytes | None = None
    hop_limit: int = ND_HOP_LIMIT


@dataclasses.dataclass(frozen=True)
class NeighborAdvertisement:
    """RFC 4861 section 4.4."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    target: ipaddress.IPv6Address
    target_lladdr: bytes | None = None
    router: bool = False
    solicited: bool = False
    override: bool = False
    hop_limit: int = ND_HOP_LIMIT


Packet = Arp | NeighborSolicitation | NeighborAdvertisement
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True)
class Frame:
    """An Ethernet II frame; ``packet`` is None for frames that are neither ARP nor neighbour discovery."""

    dst: bytes
    src: bytes
    ethertype: int
    packet: Packet | None = None
    payload: bytes = b""  # the raw payload when packet is None


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise errors.InvalidArgument(f"{text!r} is not a MAC address like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise errors.InvalidArgument(f"{text!r} is not a MAC address like 02:00:00:00:00:01") from None


def multicast_mac(ip: ipaddress.IPv6Address) -> bytes:
    """RFC 2464 section 7: 33:33 followed by the last four bytes of the IPv6 multicast address."""
    return b"\x33\x33" + ip.packed[12:]


def solicited_node(ip: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """RFC 4291 section 2.7.1: ff02::1:ffXX:XXXX from the low 24 bits of ``ip``."""
    return ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + ip.packed[13:])


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    result: int = ~total & 0xFFFF
    return result


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """RFC 4443 section 2.3 over the RFC 8200 section 8.1 pseudo-header; ``message`` has a zero checksum."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return checksum(pseudo + message)


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def encode(frame: Frame) -> bytes:
    if isinstance(frame.packet, Arp):
        body, ethertype = _encode_arp(frame.packet), ETH_P_ARP
    elif isinstance(frame.packet, NeighborSolicitation | NeighborAdvertisement):
        body, ethertype = _encode_nd(frame.packet), ETH_P_IPV6
    else:
        body, ethertype = frame.payload, frame.ethertype
    data = ETH_HEADER.pack(frame.dst, frame.src, ethertype) + body
    return data.ljust(ETH_MIN_FRAME, b"\x00")


def _encode_arp(a: Arp) -> bytes:
    return ARP.pack(
        ARP_HTYPE_ETHERNET, ETH_P_IP, 6, 4, a.op, a.sender_mac, a.sender_ip.packed, a.target_mac, a.target_ip.packed
    )


def _encode_nd(p: NeighborSolicitation | NeighborAdvertisement) -> bytes:
    if isinstance(p, NeighborSolicitation):
        kind, flags, opt_type, lladdr = ICMPV6_NS, 0, OPT_SOURCE_LLADDR, p.source_lladdr
    else:
        kind, opt_type, lladdr = ICMPV6_NA, OPT_TARGET_LLADDR, p.target_lladdr
        flags = (NA_ROUTER if p.router else 0) | (NA_SOLICITED if p.solicited else 0)
        flags |= NA_OVERRIDE if p.override else 0
    options = struct.pack("!BB6s", opt_type, 1, lladdr) if lladdr is not None else b""
    message = ND_HEADER.pack(kind, 0, 0, flags, p.target.packed) + options
    csum = icmpv6_checksum(p.src, p.dst, message)
    message = message[:2] + struct.pack("!H", csum) + message[4:]
    header = IPV6_HEADER.pack(6 << 28, len(message), IPPROTO_ICMPV6, p.hop_limit, p.src.packed, p.dst.packed)
    return header + message


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes) -> Frame:
    """Parse an Ethernet frame; raise ProtocolError for a truncated frame or malformed ARP / ND."""
    if len(data) < ETH_HEADER.size:
        raise errors.ProtocolError(f"frame of {len(data)} bytes is shorter than an Ethernet header")
    dst, src, ethertype = ETH_HEADER.unpack_from(data)
    body = data[ETH_HEADER.size :]
    if ethertype == ETH_P_ARP:
        return Frame(dst, src, ethertype, _decode_arp(body))
    if ethertype == ETH_P_IPV6:
        packet = _decode_nd(body)
        return Frame(dst, src, ethertype, packet, b"" if packet else body)
    return Frame(dst, src, ethertype, None, body)


def _decode_arp(body: bytes) -> Arp:
    if len(body) < ARP.size:
        raise errors.ProtocolError(f"ARP packet of {len(body)} bytes is shorter than {ARP.size}")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(body)
    if (htype, ptype, hlen, plen) != (ARP_HTYPE_ETHERNET, ETH_P_IP, 6, 4):
        raise errors.ProtocolError(f"ARP for hardware {htype}/protocol {ptype:#x} is not Ethernet/IPv4")
    return Arp(op, sha, ipaddress.IPv4Address(spa), tha, ipaddress.IPv4Address(tpa))


def _decode_nd(body: bytes) -> NeighborSolicitation | NeighborAdvertisement | None:
    if len(body) < IPV6_HEADER.size:
        raise errors.ProtocolError(f"IPv6 packet of {len(body)} bytes is shorter than its header")
    first, length, next_header, hop_limit, src_b, dst_b = IPV6_HEADER.unpack_from(body)
    if first >> 28 != 6:
        raise errors.ProtocolError(f"IPv6 frame carries IP version {first >> 28}")
    message = body[IPV6_HEADER.size : IPV6_HEADER.size + length]
    if next_header != IPPROTO_ICMPV6 or len(message) < 1 or message[0] not in (ICMPV6_NS, ICMPV6_NA):
        return None
    if len(message) != length:
        raise errors.ProtocolError(f"IPv6 payload length {length} but {len(message)} bytes follow")
    # RFC 4861 sections 7.1.1 and 7.1.2: validity checks that apply to both messages.
    if len(message) < ND_HEADER.size:
        raise errors.ProtocolError(f"neighbour discovery message of {len(message)} bytes is shorter than 24")
    kind, code, _, flags, target_b = ND_HEADER.unpack_from(message)
    src, dst = ipaddress.IPv6Address(src_b), ipaddress.IPv6Address(dst_b)
    if code != 0:
        raise errors.ProtocolError(f"ICMPv6 type {kind} with code {code}")
    if icmpv6_checksum(src, dst, message[:2] + b"\x00\x00" + message[4:]) != struct.unpack_from("!H", message, 2)[0]:
        raise errors.ProtocolError("ICMPv6 checksum mismatch")
    target = ipaddress.IPv6Address(target_b)
    if target.is_multicast:
        raise errors.ProtocolError(f"neighbour discovery for multicast target {target}")
    options = _options(message[ND_HEADER.size :])
    if kind == ICMPV6_NS:
        lladdr = options.get(OPT_SOURCE_LLADDR)
        if src.is_unspecified and (lladdr is not None or dst != solicited_node(target)):
            raise errors.ProtocolError("solicitation from :: must go to the solicited-node address, no lladdr")
        return NeighborSolicitation(src, dst, target, lladdr, hop_limit)
    if dst.is_multicast and flags & NA_SOLICITED:
        raise errors.ProtocolError("a solicited advertisement cannot go to a multicast address")
    return NeighborAdvertisement(
        src,
        dst,
        target,
        options.get(OPT_TARGET_LLADDR),
        router=bool(flags & NA_ROUTER),
        solicited=bool(flags & NA_SOLICITED),
        override=bool(flags & NA_OVERRIDE),
        hop_limit=hop_limit,
    )


def _options(data: bytes) -> dict[int, bytes]:
    """RFC 4861 section 4.6: type, length in units of 8 octets (0 is invalid), value.  Link-layer ones only."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2 or data[pos + 1] == 0:
            raise errors.ProtocolError("neighbour discovery option with zero length or truncated")
        kind, size = data[pos], data[pos + 1] * 8
        if pos + size > len(data):
            raise errors.ProtocolError(f"neighbour discovery option {kind} runs past the message")
        if kind in (OPT_SOURCE_LLADDR, OPT_TARGET_LLADDR) and size >= 8:
            out.setdefault(kind, data[pos + 2 : pos + 8])
        pos += size
    return out


# ---------------------------------------------------------------------------------------------------------------
# What the responder sends


def reply_to(frame: Frame, *, mac: bytes, owned: Container[IPAddress]) -> Frame | None:
    """The answer to ``frame`` if it asks for an IP in ``owned``, else None.

    ARP requests and neighbour solicitations only; a gratuitous ARP from another host (sender IP = target IP) is
    not a question, and neither is anything we receive that carries our own source MAC.
    """
    p = frame.packet
    if frame.src == mac or p is None:
        return None
    if isinstance(p, Arp):
        if p.op != ArpOp.REQUEST or p.target_ip not in owned or p.sender_ip == p.target_ip:
            return None
        answer = Arp(ArpOp.REPLY, mac, p.target_ip, p.sender_mac, p.sender_ip)
        return Frame(p.sender_mac, mac, ETH_P_ARP, answer)
    if isinstance(p, NeighborSolicitation):
        if p.hop_limit != ND_HOP_LIMIT or p.target not in owned:
            return None
        if p.src.is_unspecified:  # duplicate address detection: tell everyone (RFC 4861 section 7.2.4)
            na = NeighborAdvertisement(p.target, ALL_NODES, p.target, mac, solicited=False, override=True)
            return Frame(multicast_mac(ALL_NODES), mac, ETH_P_IPV6, na)
        na = NeighborAdvertisement(p.target, p.src, p.target, mac, solicited=True, override=True)
        return Frame(p.source_lladdr or frame.src, mac, ETH_P_IPV6, na)
    return None


def gratuitous_arp(mac: bytes, ip: ipaddress.IPv4Address, *, op: ArpOp) -> Frame:
    """RFC 5227 section 3 announcement: sender and target IP are both ``ip``; broadcast."""
    target_mac = ZERO_MAC if op == ArpOp.REQUEST else mac
    return Frame(BROADCAST, mac, ETH_P_ARP, Arp(op, mac, ip, target_mac, ip))


def unsolicited_na(mac: bytes, ip: ipaddress.IPv6Address) -> Frame:
    """RFC 4861 section 7.2.6: to all-nodes, Override set so caches switch to ``mac`` at once."""
    na = NeighborAdvertisement(ip, ALL_NODES, ip, mac, solicited=False, override=True)
    return Frame(multicast_mac(ALL_NODES), mac, ETH_P_IPV6, na)


def announcements(mac: bytes, ip: IPAddress) -> tuple[Frame, ...]:
    """Everything a node sends when it takes ``ip`` over."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (gratuitous_arp(mac, ip, op=ArpOp.REQUEST), gratuitous_arp(mac, ip, op=ArpOp.REPLY))
    return (unsolicited_na(mac, ip),)
