"""UPDATE message (RFC 4271 section 4.3) and its whole-message checks (section 6.3).

    Withdrawn Routes Length u16, Withdrawn Routes (IPv4 prefixes),
    Total Path Attribute Length u16, Path Attributes, then NLRI (IPv4 prefixes) up to the end.

Lengths that do not add up are Malformed Attribute List (3/1). When the UPDATE announces anything (NLRI, or
MP_REACH_NLRI per RFC 4760 section 3), ORIGIN and AS_PATH must be present, and NEXT_HOP too when the NLRI field
is not empty; a missing one is Missing Well-known Attribute (3/3) with its type code as data. LOCAL_PREF on
internal sessions is a session check (the codec does not know the session type).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from metalhorn.lb.bgp.messages import attributes, errors, nlri


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    withdrawn: tuple[ipaddress.IPv4Network, ...] = ()
    attributes: attributes.PathAttributes = dataclasses.field(default_factory=attributes.PathAttributes)
    nlri: tuple[ipaddress.IPv4Network, ...] = ()

    @property
    def is_end_of_rib(self) -> bool:
        """RFC 4724 section 2: an empty UPDATE (IPv4) or one with only an empty MP_UNREACH_NLRI."""
        if self.withdrawn or self.nlri:
            return False
        empty = attributes.PathAttributes()
        if self.attributes == empty:
            return True
        unreach = self.attributes.mp_unreach
        return (
            unreach is not None
            and not unreach.withdrawn
            and dataclasses.replace(self.attributes, mp_unreach=None) == empty
        )


def end_of_rib(afi: int, safi: int = nlri.Safi.UNICAST) -> Update:
    if afi == nlri.Afi.IPV4 and safi == nlri.Safi.UNICAST:
        return Update()
    return Update(attributes=attributes.PathAttributes(mp_unreach=attributes.MpUnreach(afi, safi)))


def encode_body(message: Update, *, four_octet_as: bool) -> bytes:
    withdrawn = nlri.encode(message.withdrawn)
    attrs = attributes.encode(message.attributes, four_octet_as=four_octet_as)
    return (
        struct.pack(">H", len(withdrawn))
        + withdrawn
        + struct.pack(">H", len(attrs))
        + attrs
        + nlri.encode(message.nlri)
    )


def _malformed(reason: str) -> errors.BgpError:
    return errors.update_error(errors.UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, reason=reason)


def decode_body(body: bytes, *, four_octet_as: bool) -> Update:
    if len(body) < 4:
        raise errors.header_error(
            errors.HeaderSubcode.BAD_MESSAGE_LENGTH, (19 + len(body)).to_bytes(2, "big"), reason="short UPDATE"
        )
    (withdrawn_length,) = struct.unpack_from(">H", body)
    if 2 + withdrawn_length + 2 > len(body):
        raise _malformed(f"withdrawn routes length {withdrawn_length} exceeds the message")
    (attrs_length,) = struct.unpack_from(">H", body, 2 + withdrawn_length)
    attrs_start = 4 + withdrawn_length
    if attrs_start + attrs_length > len(body):
        raise _malformed(f"total path attribute length {attrs_length} exceeds the message")
    withdrawn = nlri.decode(body[2 : 2 + withdrawn_length], nlri.Afi.IPV4)
    attrs = attributes.decode(body[attrs_start : attrs_start + attrs_length], four_octet_as=four_octet_as)
    announced = nlri.decode(body[attrs_start + attrs_length :], nlri.Afi.IPV4)
    if announced or attrs.mp_reach is not None:
        required: list[tuple[attributes.AttrType, object]] = [
            (attributes.AttrType.ORIGIN, attrs.origin),
            (attributes.AttrType.AS_PATH, attrs.as_path),
        ]
        if announced:
            required.append((attributes.AttrType.NEXT_HOP, attrs.next_hop))
        for type_code, present in required:
            if present is None:
                raise errors.update_error(
                    errors.UpdateSubcode.MISSING_WELL_KNOWN_ATTRIBUTE,
                    bytes((type_code,)),
                    reason=f"{type_code.name} missing from an UPDATE that announces routes",
                )
    return Update(
        withdrawn=tuple(p for p in withdrawn if isinstance(p, ipaddress.IPv4Network)),
        attributes=attrs,
        nlri=tuple(p for p in announced if isinstance(p, ipaddress.IPv4Network)),
    )
