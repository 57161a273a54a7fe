"""Path attributes of UPDATE (RFC 4271 sections 4.3, 5 and 6.3; RFC 4760, 6793, 1997, 8092).

Each attribute is <flags u8, type u8, length u8 (u16 with Extended Length), value>. Known attributes decode to
fields of ``PathAttributes``; unknown optional ones are kept verbatim (``UnknownAttribute``) so they can be
passed on; an unknown well-known one is Unrecognized Well-known Attribute (3/2).

Faults map to RFC 4271 section 6.3, whose Data field is the whole offending attribute (type, length, value):
  flags that disagree with the type ............................ 3/4 Attribute Flags Error
  a fixed-size attribute of the wrong size, or one running past
  the attribute section (as FRR does) .......................... 3/5 Attribute Length Error
  ORIGIN value > 2 ............................................. 3/6 Invalid ORIGIN Attribute
  NEXT_HOP 0.0.0.0, multicast or broadcast ..................... 3/8 Invalid NEXT_HOP Attribute
  malformed COMMUNITIES, LARGE_COMMUNITIES, MP_(UN)REACH_NLRI ... 3/9 Optional Attribute Error
  malformed AS_PATH (no data) .................................. 3/11 Malformed AS_PATH
  the same attribute twice (no data) ........................... 3/1 Malformed Attribute List
  prefixes inside MP_(UN)REACH_NLRI (no data) .................. 3/10 Invalid Network Field

AS numbers are 4 octets when both speakers sent the 4-octet AS capability, 2 otherwise (RFC 6793 section 4).
Encoding for an old (2-octet) peer writes AS_TRANS for large ASNs and adds AS4_PATH/AS4_AGGREGATOR (RFC 6793
section 4.2.2); decoding from one keeps AS4_PATH as an UnknownAttribute (no section 4.2.3 merge yet).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp.messages import errors, nlri

AS_TRANS = 23456


class AttrType(enum.IntEnum):
    ORIGIN = 1
    AS_PATH = 2
    NEXT_HOP = 3
    MULTI_EXIT_DISC = 4
    LOCAL_PREF = 5
    ATOMIC_AGGREGATE = 6
    AGGREGATOR = 7
    COMMUNITIES = 8  # RFC 1997
    MP_REACH_NLRI = 14  # RFC 4760
    MP_UNREACH_NLRI = 15  # RFC 4760
    AS4_PATH = 17  # RFC 6793 (kept as UnknownAttribute)
    AS4_AGGREGATOR = 18  # RFC 6793 (kept as UnknownAttribute)
    LARGE_COMMUNITIES = 32  # RFC 8092


class Flag(enum.IntFlag):
    OPTIONAL = 0x80
    TRANSITIVE = 0x40
    PARTIAL = 0x20
    EXTENDED_LENGTH = 0x10


_OPT, _TRANS, _PARTIAL, _EXT = 0x80, 0x40, 0x20, 0x10

# The Optional and Transitive bits each known type must carry (RFC 4271 section 5, RFC 4760, 1997, 8092).
EXPECTED_FLAGS: dict[int, int] = {
    AttrType.ORIGIN: _TRANS,
    AttrType.AS_PATH: _TRANS,
    AttrType.NEXT_HOP: _TRANS,
    AttrType.MULTI_EXIT_DISC: _OPT,
    AttrType.LOCAL_PREF: _TRANS,
    AttrType.ATOMIC_AGGREGATE: _TRANS,
    AttrType.AGGREGATOR: _OPT | _TRANS,
    AttrType.COMMUNITIES: _OPT | _TRANS,
    AttrType.MP_REACH_NLRI: _OPT,
    AttrType.MP_UNREACH_NLRI: _OPT,
    AttrType.LARGE_COMMUNITIES: _OPT | _TRANS,
}


class Origin(enum.IntEnum):
    IGP = 0
    EGP = 1
    INCOMPLETE = 2


class SegmentType(enum.IntEnum):
    AS_SET = 1
    AS_SEQUENCE = 2
    AS_CONFED_SEQUENCE = 3  # RFC 5065
    AS_CONFED_SET = 4  # RFC 5065


# Well-known communities (RFC 1997 section 4).
NO_EXPORT = 0xFFFFFF01
NO_ADVERTISE = 0xFFFFFF02
NO_EXPORT_SUBCONFED = 0xFFFFFF03


def community(high: int, low: int) -> int:
    """The 32-bit community usually written high:low (RFC 1997)."""
    return (high << 16) | low


@dataclasses.dataclass(frozen=True, slots=True)
class AsPathSegment:
    type: SegmentType
    asns: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Aggregator:
    asn: int
    address: ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True, slots=True)
class LargeCommunity:
    """RFC 8092: Global Administrator (an ASN), Local Data Part 1, Local Data Part 2; 32 bits each."""

    global_admin: int
    local1: int
    local2: int


@dataclasses.dataclass(frozen=True, slots=True)
class MpReach:
    """RFC 4760 section 3. ``next_hops``: one address, or IPv6 global + link-local (RFC 2545 section 3)."""

    afi: int
    safi: int
    next_hops: tuple[nlri.Address, ...]
    nlri: tuple[nlri.Prefix, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class MpUnreach:
    """RFC 4760 section 4. No withdrawn prefixes = End-of-RIB for that family (RFC 4724 section 2)."""

    afi: int
    safi: int
    withdrawn: tuple[nlri.Prefix, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownAttribute:
    """An optional attribute we do not interpret; ``flags`` without the Extended Length bit."""

    type_code: int
    flags: int
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class PathAttributes:
    """All path attributes of one UPDATE; None/empty/False means absent."""

    origin: Origin | None = None
    as_path: tuple[AsPathSegment, ...] | None = None
    next_hop: ipaddress.IPv4Address | None = None
    med: int | None = None
    local_pref: int | None = None
    atomic_aggregate: bool = False
    aggregator: Aggregator | None = None
    communities: tuple[int, ...] = ()
    large_communities: tuple[LargeCommunity, ...] = ()
    mp_reach: MpReach | None = None
    mp_unreach: MpUnreach | None = None
    unknown: tuple[UnknownAttribute, ...] = ()


def as_sequence(*asns: int) -> tuple[AsPathSegment, ...]:
    """An AS_PATH of one AS_SEQUENCE (or the empty path of a locally originated iBGP route)."""
    return (AsPathSegment(SegmentType.AS_SEQUENCE, tuple(asns)),) if asns else ()


# -- encoding ----------------------------------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_MAX_SEGMENT = 255


def _encode_as_path(segments: tuple[AsPathSegment, ...], *, width: int) -> bytes:
    out = bytearray()
    for segment in segments:
        asns = segment.asns
        if not asns:
            raise mh_errors.InvalidArgument("an AS_PATH segment needs at least one ASN (RFC 7606 section 7.2)")
        # A segment holds at most 255 ASNs; longer ones continue in the next segment of the same type.
        for start in range(0, len(asns), _MAX_SEGMENT):
            chunk = asns[start : start + _MAX_SEGMENT]
            out += bytes((segment.type, len(chunk)))
            for asn in chunk:
                out += asn.to_bytes(width, "big") if width == 4 or asn <= 0xFFFF else AS_TRANS.to_bytes(2, "big")
    return bytes(out)


def _encode_mp_reach(value: MpReach) -> bytes:
    hops = b"".join(address.packed for address in value.next_hops)
    return struct.pack(">HBB", value.afi, value.safi, len(hops)) + hops + b"\x00" + nlri.encode(value.nlri)


def _items(attrs: PathAttributes, *, four_octet_as: bool) -> list[tuple[int, int, bytes]]:
    """(type, flags, value) of every present attribute, in type order."""
    items: list[tuple[int, int, bytes]] = []
    width = 4 if four_octet_as else 2
    if attrs.origin is not None:
        items.append((AttrType.ORIGIN, _TRANS, bytes((attrs.origin,))))
    if attrs.as_path is not None:
        items.append((AttrType.AS_PATH, _TRANS, _encode_as_path(attrs.as_path, width=width)))
        if not four_octet_as and any(a > 0xFFFF for s in attrs.as_path for a in s.asns):
            items.append((AttrType.AS4_PATH, _OPT | _TRANS, _encode_as_path(attrs.as_path, width=4)))
    if attrs.next_hop is not None:
        items.append((AttrType.NEXT_HOP, _TRANS, attrs.next_hop.packed))
    if attrs.med is not None:
        items.append((AttrType.MULTI_EXIT_DISC, _OPT, _U32.pack(attrs.med)))
    if attrs.local_pref is not None:
        items.append((AttrType.LOCAL_PREF, _TRANS, _U32.pack(attrs.local_pref)))
    if attrs.atomic_aggregate:
        items.append((AttrType.ATOMIC_AGGREGATE, _TRANS, b""))
    if attrs.aggregator is not None:
        asn = attrs.aggregator.asn
        address = attrs.aggregator.address.packed
        if four_octet_as:
            items.append((AttrType.AGGREGATOR, _OPT | _TRANS, _U32.pack(asn) + address))
        else:
            small = asn if asn <= 0xFFFF else AS_TRANS
            items.append((AttrType.AGGREGATOR, _OPT | _TRANS, small.to_bytes(2, "big") + address))
            if asn > 0xFFFF:
                items.append((AttrType.AS4_AGGREGATOR, _OPT | _TRANS, _U32.pack(asn) + address))
    if attrs.communities:
        items.append((AttrType.COMMUNITIES, _OPT | _TRANS, b"".join(_U32.pack(c) for c in attrs.communities)))
    if attrs.mp_reach is not None:
        items.append((AttrType.MP_REACH_NLRI, _OPT, _encode_mp_reach(attrs.mp_reach)))
    if attrs.mp_unreach is not None:
        value = attrs.mp_unreach
        body = struct.pack(">HB", value.afi, value.safi) + nlri.encode(value.withdrawn)
        items.append((AttrType.MP_UNREACH_NLRI, _OPT, body))
    if attrs.large_communities:
        body = b"".join(struct.pack(">III", c.global_admin, c.local1, c.local2) for c in attrs.large_communities)
        items.append((AttrType.LARGE_COMMUNITIES, _OPT | _TRANS, body))
    for unknown in attrs.unknown:
        if unknown.type_code in EXPECTED_FLAGS:
            raise mh_errors.InvalidArgument(f"attribute type {unknown.type_code} is known; use its field")
        items.append((unknown.type_code, unknown.flags & ~_EXT, unknown.value))
    items.sort(key=lambda item: item[0])
    return items


def encode(attrs: PathAttributes, *, four_octet_as: bool) -> bytes:
    out = bytearray()
    for type_code, flags, value in _items(attrs, four_octet_as=four_octet_as):
        if len(value) > 0xFF:
            out += struct.pack(">BBH", flags | _EXT, type_code, len(value))
        else:
            out += bytes((flags, type_code, len(value)))
        out += value
    return bytes(out)


# -- decoding ----------------------------------------------------------------------------------------------------


def _as_path(value: bytes, *, width: int) -> tuple[AsPathSegment, ...]:
    segments: list[AsPathSegment] = []
    offset = 0
    while offset < len(value):
        if offset + 2 > len(value):
            raise errors.update_error(errors.UpdateSubcode.MALFORMED_AS_PATH, reason="truncated segment header")
        kind, count = value[offset], value[offset + 1]
        if kind not in SegmentType._value2member_map_:
            raise errors.update_error(errors.UpdateSubcode.MALFORMED_AS_PATH, reason=f"segment type {kind}")
        if count == 0:
            raise errors.update_error(errors.UpdateSubcode.MALFORMED_AS_PATH, reason="empty segment (RFC 7606)")
        end = offset + 2 + count * width
        if end > len(value):
            raise errors.update_error(errors.UpdateSubcode.MALFORMED_AS_PATH, reason="segment runs past AS_PATH")
        raw = value[offset + 2 : end]
        asns = tuple(int.from_bytes(raw[i : i + width], "big") for i in range(0, len(raw), width))
        segments.append(AsPathSegment(SegmentType(kind), asns))
        offset = end
    return tuple(segments)


def _next_hop_ok(address: nlri.Address) -> bool:
    return not (address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"))


def _mp_reach(value: bytes, attribute: bytes) -> MpReach:
    def bad(reason: str) -> errors.BgpError:
        return errors.update_error(errors.UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, attribute, reason=reason)

    if len(value) < 5:
        raise bad("MP_REACH_NLRI shorter than 5 octets")
    afi, safi, hop_length = struct.unpack_from(">HBB", value)
    if (afi, safi) not in nlri.SUPPORTED_FAMILIES:
        raise bad(f"MP_REACH_NLRI for unsupported family afi={afi} safi={safi}")
    if 4 + hop_length + 1 > len(value):
        raise bad("MP_REACH_NLRI next hop runs past the attribute")
    raw = value[4 : 4 + hop_length]
    hops: tuple[nlri.Address, ...]
    if hop_length == 4:
        hops = (ipaddress.IPv4Address(raw),)
    elif hop_length == 16:
        hops = (ipaddress.IPv6Address(raw),)
    elif hop_length == 32:  # global + link-local (RFC 2545 section 3)
        hops = (ipaddress.IPv6Address(raw[:16]), ipaddress.IPv6Address(raw[16:]))
    else:
        raise bad(f"MP_REACH_NLRI next hop of {hop_length} octets")
    if afi == nlri.Afi.IPV6 and hop_length == 4:
        raise bad("IPv6 MP_REACH_NLRI with an IPv4 next hop")
    if not _next_hop_ok(hops[0]):
        raise bad(f"MP_REACH_NLRI next hop {hops[0]} is not a unicast address")
    return MpReach(afi, safi, hops, nlri.decode(value[4 + hop_length + 1 :], afi))


def _mp_unreach(value: bytes, attribute: bytes) -> MpUnreach:
    if len(value) < 3:
        raise errors.update_error(
            errors.UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, attribute, reason="MP_UNREACH_NLRI shorter than 3 octets"
        )
    afi, safi = struct.unpack_from(">HB", value)
    if (afi, safi) not in nlri.SUPPORTED_FAMILIES:
        raise errors.update_error(
            errors.UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR,
            attribute,
            reason=f"MP_UNREACH_NLRI for unsupported family afi={afi} safi={safi}",
        )
    return MpUnreach(afi, safi, nlri.decode(value[3:], afi))


_FIXED_LENGTHS: dict[int, int] = {
    AttrType.ORIGIN: 1,
    AttrType.NEXT_HOP: 4,
    AttrType.MULTI_EXIT_DISC: 4,
    AttrType.LOCAL_PREF: 4,
    AttrType.ATOMIC_AGGREGATE: 0,
}


def decode(data: bytes, *, four_octet_as: bool) -> PathAttributes:
    """Decode the Path Attributes field of an UPDATE (RFC 4271 section 6.3 checks, in the order given there)."""
    fields: dict[str, object] = {}
    unknown: list[UnknownAttribute] = []
    seen: set[int] = set()
    offset = 0
    end = len(data)
    width = 4 if four_octet_as else 2
    while offset < end:
        if end - offset < 3:
            raise errors.update_error(
                errors.UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, data[offset:], reason="truncated attribute header"
            )
        flags, type_code = data[offset], data[offset + 1]
        if flags & _EXT:
            if end - offset < 4:
                raise errors.update_error(
                    errors.UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, data[offset:], reason="truncated attribute header"
                )
            length = int.from_bytes(data[offset + 2 : offset + 4], "big")
            start = offset + 4
        else:
            length = data[offset + 2]
            start = offset + 3
        if start + length > end:
            raise errors.update_error(
                errors.UpdateSubcode.ATTRIBUTE_LENGTH_ERROR,
                data[offset:],
                reason=f"attribute {type_code} of length {length} runs past the attribute list",
            )
        attribute = data[offset : start + length]
        value = data[start : start + length]
        offset = start + length
        if type_code in seen:
            raise errors.update_error(
                errors.UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, reason=f"attribute {type_code} appears twice"
            )
        seen.add(type_code)
        expected = EXPECTED_FLAGS.get(type_code)
        if expected is None:
            if not flags & _OPT:
                raise errors.update_error(
                    errors.UpdateSubcode.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                    attribute,
                    reason=f"well-known attribute type {type_code} is not known to us",
                )
            unknown.append(UnknownAttribute(type_code, flags & ~_EXT, bytes(value)))
            continue
        partial_allowed = expected == _OPT | _TRANS
        if flags & (_OPT | _TRANS) != expected or (flags & _PARTIAL and not partial_allowed):
            raise errors.update_error(
                errors.UpdateSubcode.ATTRIBUTE_FLAGS_ERROR,
                attribute,
                reason=f"flags 0x{flags:02x} invalid for {AttrType(type_code).name}",
            )
        fixed = _FIXED_LENGTHS.get(type_code)
        if type_code == AttrType.AGGREGATOR:
            fixed = width + 4
        if fixed is not None and length != fixed:
            raise errors.update_error(
                errors.UpdateSubcode.ATTRIBUTE_LENGTH_ERROR,
                attribute,
                reason=f"{AttrType(type_code).name} of length {length}, expected {fixed}",
            )
        _decode_known(type_code, value, attribute, fields, width=width)
    return PathAttributes(**fields, unknown=tuple(unknown))  # type: ignore[arg-type]


def _decode_known(type_code: int, value: bytes, attribute: bytes, fields: dict[str, object], *, width: int) -> None:
    if type_code == AttrType.ORIGIN:
        if value[0] > Origin.INCOMPLETE:
            raise errors.update_error(
                errors.UpdateSubcode.INVALID_ORIGIN_ATTRIBUTE, attribute, reason=f"ORIGIN value {value[0]}"
            )
        fields["origin"] = Origin(value[0])
    elif type_code == AttrType.AS_PATH:
        fields["as_path"] = _as_path(value, width=width)
    elif type_code == AttrType.NEXT_HOP:
        address = ipaddress.IPv4Address(value)
        if not _next_hop_ok(address):
            raise errors.update_error(
                errors.UpdateSubcode.INVALID_NEXT_HOP_ATTRIBUTE, attribute, reason=f"NEXT_HOP {address}"
            )
        fields["next_hop"] = address
    elif type_code == AttrType.MULTI_EXIT_DISC:
        fields["med"] = _U32.unpack(value)[0]
    elif type_code == AttrType.LOCAL_PREF:
        fields["local_pref"] = _U32.unpack(value)[0]
    elif type_code == AttrType.ATOMIC_AGGREGATE:
        fields["atomic_aggregate"] = True
    elif type_code == AttrType.AGGREGATOR:
        fields["aggregator"] = Aggregator(int.from_bytes(value[:width], "big"), ipaddress.IPv4Address(value[width:]))
    elif type_code == AttrType.COMMUNITIES:
        if not value or len(value) % 4:
            raise errors.update_error(
                errors.UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, attribute, reason=f"COMMUNITIES of length {len(value)}"
            )
        fields["communities"] = struct.unpack(f">{len(value) // 4}I", value)
    elif type_code == AttrType.LARGE_COMMUNITIES:
        if not value or len(value) % 12:
            raise errors.update_error(
                errors.UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR,
                attribute,
                reason=f"LARGE_COMMUNITIES of length {len(value)}",
            )
        fields["large_communities"] = tuple(
            LargeCommunity(*struct.unpack_from(">III", value, i)) for i in range(0, len(value), 12)
        )
    elif type_code == AttrType.MP_REACH_NLRI:
        fields["mp_reach"] = _mp_reach(value, attribute)
    elif type_code == AttrType.MP_UNREACH_NLRI:
        fields["mp_unreach"] = _mp_unreach(value, attribute)
