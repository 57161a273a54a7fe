"""Address families and the prefix encoding of NLRI (RFC 4271 section 4.3, RFC 4760 section 5).

A prefix is <length octet, the fewest whole octets holding `length` bits>. Bits past the prefix length in the
last octet are irrelevant (section 4.3) and are masked away on decode, so a decoded prefix is always a valid
network. A length beyond the family's width or a truncated prefix is Invalid Network Field (3/10): the UPDATE's
NLRI field carries no data for it (section 6.3).
"""

from __future__ import annotations

import enum
import ipaddress

from metalhorn.lb.bgp.messages import errors

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Afi(enum.IntEnum):
    """Address Family Identifiers (IANA), as used by RFC 4760."""

    IPV4 = 1
    IPV6 = 2


class Safi(enum.IntEnum):
    """Subsequent Address Family Identifiers (RFC 4760 section 6); only unicast is routed by metalhorn."""

    UNICAST = 1
    MULTICAST = 2


SUPPORTED_FAMILIES = frozenset({(Afi.IPV4, Safi.UNICAST), (Afi.IPV6, Safi.UNICAST)})


def afi_of(prefix: Prefix) -> Afi:
    return Afi.IPV4 if prefix.version == 4 else Afi.IPV6


def encoded_size(prefix: Prefix) -> int:
    return 1 + (prefix.prefixlen + 7) // 8


def encode(prefixes: tuple[Prefix, ...] | list[Prefix]) -> bytes:
    out = bytearray()
    for prefix in prefixes:
        length = prefix.prefixlen
        out.append(length)
        out += prefix.network_address.packed[: (length + 7) // 8]
    return bytes(out)


def decode(data: bytes, afi: int) -> tuple[Prefix, ...]:
    """Decode a run of prefixes of one family; raises BgpError 3/10 on a malformed one."""
    width = 32 if afi == Afi.IPV4 else 128
    octets = width // 8
    network: type[ipaddress.IPv4Network] | type[ipaddress.IPv6Network] = (
        ipaddress.IPv4Network if afi == Afi.IPV4 else ipaddress.IPv6Network
    )
    out: list[Prefix] = []
    offset = 0
    end = len(data)
    while offset < end:
        length = data[offset]
        size = (length + 7) // 8
        if length > width:
            raise errors.update_error(
                errors.UpdateSubcode.INVALID_NETWORK_FIELD, reason=f"prefix length {length} > {width}"
            )
        if offset + 1 + size > end:
            raise errors.update_error(errors.UpdateSubcode.INVALID_NETWORK_FIELD, reason="prefix runs past its field")
        value = int.from_bytes(data[offset + 1 : offset + 1 + size], "big") << (8 * (octets - size))
        out.append(network((value, length), strict=False))
        offset += 1 + size
    return tuple(out)
