"""The fixed-layout messages: KEEPALIVE (RFC 4271 section 4.4), NOTIFICATION (4.5), ROUTE-REFRESH (RFC 2918 3).

KEEPALIVE is the header alone. NOTIFICATION is <Error code u8, Error subcode u8, Data>; codes stay plain ints
(a peer may use codes newer than us; ``errors.describe`` names them). ROUTE-REFRESH is <AFI u16, Reserved u8,
SAFI u8>; the reserved octet is RFC 7313's message subtype, kept so enhanced route refresh can use it later.
Lengths are checked by the header (header.py): KEEPALIVE exactly 19, NOTIFICATION >= 21, ROUTE-REFRESH 23.
"""

from __future__ import annotations

import dataclasses
import struct

from metalhorn.lb.bgp.messages import errors

_REFRESH = struct.Struct(">HBB")


@dataclasses.dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    code: int
    subcode: int = 0
    data: bytes = b""

    @classmethod
    def from_error(cls, error: errors.BgpError) -> Notification:
        return cls(error.bgp_code, error.bgp_subcode, error.data)

    def describe(self) -> str:
        return errors.describe(self.code, self.subcode)


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRefresh:
    afi: int
    safi: int
    subtype: int = 0


def _length_error(body: bytes, what: str) -> errors.BgpError:
    return errors.header_error(
        errors.HeaderSubcode.BAD_MESSAGE_LENGTH, (19 + len(body)).to_bytes(2, "big"), reason=f"bad {what} length"
    )


def encode_notification(message: Notification) -> bytes:
    return bytes((message.code, message.subcode)) + message.data


def decode_notification(body: bytes) -> Notification:
    if len(body) < 2:
        raise _length_error(body, "NOTIFICATION")
    return Notification(body[0], body[1], bytes(body[2:]))


def encode_route_refresh(message: RouteRefresh) -> bytes:
    return _REFRESH.pack(message.afi, message.subtype, message.safi)


def decode_route_refresh(body: bytes) -> RouteRefresh:
    if len(body) != _REFRESH.size:
        raise _length_error(body, "ROUTE-REFRESH")
    afi, subtype, safi = _REFRESH.unpack(body)
    return RouteRefresh(afi, safi, subtype)


def decode_keepalive(body: bytes) -> Keepalive:
    if body:
        raise _length_error(body, "KEEPALIVE")
    return Keepalive()
