"""Capabilities Advertisement (RFC 5492): the OPEN optional parameter of type 2.

Each capability is <code u8, length u8, value>. Known ones are decoded to values; every other capability is
kept verbatim as ``Unknown`` so a session can log it and tests can round-trip real OPENs (graceful restart,
ADD-PATH, FQDN, enhanced route refresh, ...). A known capability with a wrong length is a malformed optional
parameter: OPEN Message Error / Unspecific (RFC 4271 section 6.2).
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from metalhorn.lb.bgp.messages import errors


class Code(enum.IntEnum):
    MULTIPROTOCOL = 1  # RFC 4760 section 8
    ROUTE_REFRESH = 2  # RFC 2918 section 2
    EXTENDED_NEXT_HOP = 5  # RFC 8950 (kept as Unknown)
    EXTENDED_MESSAGE = 6  # RFC 8654 (kept as Unknown)
    GRACEFUL_RESTART = 64  # RFC 4724 (kept as Unknown)
    FOUR_OCTET_AS = 65  # RFC 6793 section 3
    ADD_PATH = 69  # RFC 7911 (kept as Unknown)
    ENHANCED_ROUTE_REFRESH = 70  # RFC 7313 (kept as Unknown)
    FQDN = 73  # draft-walton-bgp-hostname-capability (kept as Unknown)
    ROUTE_REFRESH_OLD = 128  # pre-standard Cisco code (kept as Unknown)


@dataclasses.dataclass(frozen=True, slots=True)
class Multiprotocol:
    """RFC 4760 section 8: <AFI u16, reserved u8, SAFI u8>. Plain ints, so families we do not route survive."""

    afi: int
    safi: int


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRefresh:
    """RFC 2918 section 2: empty value."""


@dataclasses.dataclass(frozen=True, slots=True)
class FourOctetAs:
    """RFC 6793 section 3: the speaker's real (4-octet) AS number."""

    asn: int


@dataclasses.dataclass(frozen=True, slots=True)
class Unknown:
    code: int
    value: bytes = b""


Capability = Multiprotocol | RouteRefresh | FourOctetAs | Unknown

_MP = struct.Struct(">HBB")
_ASN = struct.Struct(">I")


def encode_one(capability: Capability) -> bytes:
    code: int
    if isinstance(capability, Multiprotocol):
        code, value = Code.MULTIPROTOCOL, _MP.pack(capability.afi, 0, capability.safi)
    elif isinstance(capability, RouteRefresh):
        code, value = Code.ROUTE_REFRESH, b""
    elif isinstance(capability, FourOctetAs):
        code, value = Code.FOUR_OCTET_AS, _ASN.pack(capability.asn)
    else:
        code, value = capability.code, capability.value
    return bytes((code, len(value))) + value


def _malformed(reason: str) -> errors.BgpError:
    return errors.open_error(errors.OpenSubcode.UNSPECIFIC, reason=reason)


def decode(data: bytes) -> list[Capability]:
    """Decode the value of one Capabilities optional parameter (it may hold several capabilities)."""
    out: list[Capability] = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise _malformed("truncated capability header")
        code, length = data[offset], data[offset + 1]
        value = data[offset + 2 : offset + 2 + length]
        if len(value) != length:
            raise _malformed(f"capability {code} runs past its parameter")
        offset += 2 + length
        if code == Code.MULTIPROTOCOL:
            if length != 4:
                raise _malformed(f"multiprotocol capability of length {length}, expected 4")
            afi, _reserved, safi = _MP.unpack(value)
            out.append(Multiprotocol(afi, safi))
        elif code == Code.ROUTE_REFRESH:
            if length != 0:
                raise _malformed(f"route refresh capability of length {length}, expected 0")
            out.append(RouteRefresh())
        elif code == Code.FOUR_OCTET_AS:
            if length != 4:
                raise _malformed(f"4-octet AS capability of length {length}, expected 4")
            out.append(FourOctetAs(_ASN.unpack(value)[0]))
        else:
            out.append(Unknown(code, bytes(value)))
    return out
