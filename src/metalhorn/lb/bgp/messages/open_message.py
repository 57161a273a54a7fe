"""OPEN message (RFC 4271 section 4.2) with optional parameters (RFC 5492, RFC 9072).

    0  Version          u8   4
    1  My AS            u16  AS_TRANS (23456) when the real ASN needs 4 octets (RFC 6793 section 4.1)
    3  Hold Time        u16  0 or >= 3 seconds
    5  BGP Identifier   u32  non-zero (RFC 6286)
    9  Opt Parm Len     u8   (255 + a type-255 parameter: RFC 9072 extended parameters, 2-octet lengths)
    10 Optional Parameters  <type u8, length u8, value>; only type 2 (Capabilities) is known

Decode checks are the syntactic ones of section 6.2; ``check_peer`` adds the ones needing configuration
(expected peer AS, our own identifier).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp.messages import capabilities as caps
from metalhorn.lb.bgp.messages import errors

VERSION = 4
AS_TRANS = 23456
PARAM_CAPABILITIES = 2
PARAM_EXTENDED = 255  # RFC 9072 section 2
_FIXED = struct.Struct(">BHHIB")
_MAX_VALUE = 255


@dataclasses.dataclass(frozen=True, slots=True)
class Open:
    """An OPEN. ``my_as`` is the 2-octet field as sent; ``asn`` is the real AS number."""

    my_as: int
    hold_time: int
    bgp_id: ipaddress.IPv4Address
    capabilities: tuple[caps.Capability, ...] = ()
    version: int = VERSION

    @classmethod
    def build(
        cls,
        *,
        asn: int,
        hold_time: int,
        bgp_id: ipaddress.IPv4Address,
        capabilities: tuple[caps.Capability, ...] = (),
    ) -> Open:
        """Our OPEN: My AS = AS_TRANS when asn > 65535, and always a 4-octet AS capability (RFC 6793 4.1)."""
        kept = tuple(c for c in capabilities if not isinstance(c, caps.FourOctetAs))
        return cls(
            my_as=asn if asn <= 0xFFFF else AS_TRANS,
            hold_time=hold_time,
            bgp_id=bgp_id,
            capabilities=(*kept, caps.FourOctetAs(asn)),
        )

    @property
    def asn(self) -> int:
        """The speaker's AS: the 4-octet AS capability if present, else My AS (RFC 6793 section 4.1)."""
        for capability in self.capabilities:
            if isinstance(capability, caps.FourOctetAs):
                return capability.asn
        return self.my_as

    @property
    def four_octet_as(self) -> bool:
        return any(isinstance(c, caps.FourOctetAs) for c in self.capabilities)

    def families(self) -> frozenset[tuple[int, int]]:
        return frozenset((c.afi, c.safi) for c in self.capabilities if isinstance(c, caps.Multiprotocol))

    @property
    def route_refresh(self) -> bool:
        return any(isinstance(c, caps.RouteRefresh) for c in self.capabilities)


def encode_body(message: Open) -> bytes:
    if message.hold_time in (1, 2) or not 0 <= message.hold_time <= 0xFFFF:
        raise mh_errors.InvalidArgument(f"hold time {message.hold_time}: must be 0 or 3..65535 (RFC 4271 4.2)")
    if not 0 < message.my_as <= 0xFFFF:
        raise mh_errors.InvalidArgument(f"My AS {message.my_as} does not fit 2 octets; use Open.build")
    encoded = [caps.encode_one(c) for c in message.capabilities]
    # One Capabilities parameter per 255 octets of capabilities (RFC 5492 section 4 allows several).
    groups: list[bytes] = []
    current = b""
    for item in encoded:
        if current and len(current) + len(item) > _MAX_VALUE:
            groups.append(current)
            current = b""
        current += item
    if current:
        groups.append(current)
    params = b"".join(bytes((PARAM_CAPABILITIES, len(group))) + group for group in groups)
    if len(params) <= _MAX_VALUE - 1:  # 255 announces RFC 9072 extended parameters, so never send it plain
        opt_len = len(params)
    else:  # RFC 9072: Opt Parm Len 255, then type 255 and a 2-octet length; each parameter length 2 octets
        params = b"".join(struct.pack(">BH", PARAM_CAPABILITIES, len(group)) + group for group in groups)
        params = struct.pack(">BH", PARAM_EXTENDED, len(params)) + params
        opt_len = _MAX_VALUE
    fixed = _FIXED.pack(message.version, message.my_as, message.hold_time, int(message.bgp_id), opt_len)
    return fixed + params


def _params(body: bytes) -> list[tuple[int, bytes]]:
    opt_len = body[9]
    data = body[10:]
    extended = opt_len == _MAX_VALUE and len(data) >= 1 and data[0] == PARAM_EXTENDED
    if extended:
        if len(data) < 3:
            raise errors.open_error(errors.OpenSubcode.UNSPECIFIC, reason="truncated extended parameter length")
        (opt_len,) = struct.unpack_from(">H", data, 1)
        data = data[3:]
    if opt_len != len(data):
        raise errors.open_error(
            errors.OpenSubcode.UNSPECIFIC, reason=f"optional parameters length {opt_len} != {len(data)} octets left"
        )
    header = 3 if extended else 2
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if offset + header > len(data):
            raise errors.open_error(errors.OpenSubcode.UNSPECIFIC, reason="truncated optional parameter")
        kind = data[offset]
        length = struct.unpack_from(">H", data, offset + 1)[0] if extended else data[offset + 1]
        value = data[offset + header : offset + header + length]
        if len(value) != length:
            raise errors.open_error(errors.OpenSubcode.UNSPECIFIC, reason=f"optional parameter {kind} overruns")
        out.append((kind, bytes(value)))
        offset += header + length
    return out


def decode_body(body: bytes) -> Open:
    """Decode and check an OPEN body (RFC 4271 section 6.2, RFC 5492, RFC 6286, RFC 7607)."""
    if len(body) < _FIXED.size:
        raise errors.header_error(
            errors.HeaderSubcode.BAD_MESSAGE_LENGTH, (19 + len(body)).to_bytes(2, "big"), reason="short OPEN"
        )
    version, my_as, hold_time, bgp_id, _ = _FIXED.unpack_from(body)
    if version != VERSION:
        raise errors.open_error(
            errors.OpenSubcode.UNSUPPORTED_VERSION_NUMBER,
            VERSION.to_bytes(2, "big"),
            reason=f"peer speaks BGP version {version}, we speak {VERSION}",
        )
    found: list[caps.Capability] = []
    for kind, value in _params(body):
        if kind != PARAM_CAPABILITIES:
            raise errors.open_error(
                errors.OpenSubcode.UNSUPPORTED_OPTIONAL_PARAMETER, reason=f"optional parameter type {kind}"
            )
        found += caps.decode(value)
    message = Open(my_as=my_as, hold_time=hold_time, bgp_id=ipaddress.IPv4Address(bgp_id), capabilities=tuple(found))
    if my_as == 0 or message.asn == 0:
        raise errors.open_error(errors.OpenSubcode.BAD_PEER_AS, reason="AS 0 is reserved (RFC 7607)")
    if bgp_id == 0:
        raise errors.open_error(errors.OpenSubcode.BAD_BGP_IDENTIFIER, reason="BGP identifier 0 (RFC 6286)")
    if hold_time in (1, 2):
        raise errors.open_error(
            errors.OpenSubcode.UNACCEPTABLE_HOLD_TIME, reason=f"hold time {hold_time}: must be 0 or >= 3"
        )
    return message


def check_peer(
    message: Open,
    *,
    expected_asn: int | None,
    local_asn: int,
    local_bgp_id: ipaddress.IPv4Address,
    min_hold_time: int = 0,
) -> None:
    """The configuration-dependent OPEN checks of RFC 4271 section 6.2 (and RFC 6286 section 2.2).

    ``expected_asn`` None accepts any AS (dynamic neighbours). ``min_hold_time`` lets an operator refuse hold
    times that are too short; 0 (no keepalives) is always allowed, as the RFC allows it.
    """
    if expected_asn is not None and message.asn != expected_asn:
        raise errors.open_error(
            errors.OpenSubcode.BAD_PEER_AS, reason=f"peer AS {message.asn}, configured {expected_asn}"
        )
    if message.asn == local_asn and message.bgp_id == local_bgp_id:
        raise errors.open_error(
            errors.OpenSubcode.BAD_BGP_IDENTIFIER, reason=f"internal peer uses our own identifier {local_bgp_id}"
        )
    if message.hold_time != 0 and message.hold_time < min_hold_time:
        raise errors.open_error(
            errors.OpenSubcode.UNACCEPTABLE_HOLD_TIME,
            reason=f"hold time {message.hold_time} below the configured minimum {min_hold_time}",
        )
