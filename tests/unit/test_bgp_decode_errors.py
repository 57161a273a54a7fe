"""Every decoding fault maps to the (code, subcode, data) RFC 4271 section 6 prescribes for it."""

from __future__ import annotations

import ipaddress

import bgp_hex
import pytest

from metalhorn.lb.bgp.messages import codec, errors, header, open_message

ORIGIN = bytes.fromhex("40010100")
AS_PATH = bytes.fromhex("40020602010000fde9")
NEXT_HOP = bytes.fromhex("400304c6120001")
MANDATORY = ORIGIN + AS_PATH + NEXT_HOP
NLRI = bytes.fromhex("18c61264")  # 198.18.100.0/24


def update(attributes: bytes, nlri: bytes = NLRI, withdrawn: bytes = b"") -> bytes:
    body = len(withdrawn).to_bytes(2, "big") + withdrawn + len(attributes).to_bytes(2, "big") + attributes + nlri
    return bgp_hex.message(2, body)


def open_body(
    *, version: int = 4, my_as: int = 65001, hold: int = 90, bgp_id: int = 0xC6120001, params: bytes = b""
) -> bytes:
    return (
        bytes((version,))
        + my_as.to_bytes(2, "big")
        + hold.to_bytes(2, "big")
        + bgp_id.to_bytes(4, "big")
        + bytes((len(params),))
        + params
    )


H, OP, U = errors.HeaderSubcode, errors.OpenSubcode, errors.UpdateSubcode
HEADER, OPEN, UPDATE = 1, 2, 3

CASES: list[tuple[str, bytes, tuple[int, int, bytes]]] = [
    (
        "bad-marker",
        bgp_hex.message(4, b"", marker=b"\xff" * 15 + b"\x00"),
        (HEADER, H.CONNECTION_NOT_SYNCHRONIZED, b""),
    ),
    ("length-18", bgp_hex.message(4, b"", length=18), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x00\x12")),
    ("length-4097", bgp_hex.message(2, b"", length=4097), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x10\x01")),
    ("keepalive-20", bgp_hex.message(4, b"\x00"), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x00\x14")),
    ("open-too-short", bgp_hex.message(1, b"\x04" * 9), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x00\x1c")),
    ("update-too-short", bgp_hex.message(2, b"\x00\x00"), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x00\x15")),
    ("notification-too-short", bgp_hex.message(3, b"\x06"), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x00\x14")),
    ("route-refresh-24", bgp_hex.message(5, b"\x00\x01\x00\x01\x00"), (HEADER, H.BAD_MESSAGE_LENGTH, b"\x00\x18")),
    ("type-9", bgp_hex.message(9, b""), (HEADER, H.BAD_MESSAGE_TYPE, b"\x09")),
    ("type-0", bgp_hex.message(0, b""), (HEADER, H.BAD_MESSAGE_TYPE, b"\x00")),
    ("open-version-3", bgp_hex.message(1, open_body(version=3)), (OPEN, OP.UNSUPPORTED_VERSION_NUMBER, b"\x00\x04")),
    ("open-as-0", bgp_hex.message(1, open_body(my_as=0)), (OPEN, OP.BAD_PEER_AS, b"")),
    (
        "open-as4-cap-0",
        bgp_hex.message(1, open_body(params=bytes.fromhex("0206410400000000"))),
        (OPEN, OP.BAD_PEER_AS, b""),
    ),
    ("open-bgp-id-0", bgp_hex.message(1, open_body(bgp_id=0)), (OPEN, OP.BAD_BGP_IDENTIFIER, b"")),
    ("open-hold-1", bgp_hex.message(1, open_body(hold=1)), (OPEN, OP.UNACCEPTABLE_HOLD_TIME, b"")),
    ("open-hold-2", bgp_hex.message(1, open_body(hold=2)), (OPEN, OP.UNACCEPTABLE_HOLD_TIME, b"")),
    (
        "open-unknown-parameter",
        bgp_hex.message(1, open_body(params=bytes.fromhex("0102abcd"))),
        (OPEN, OP.UNSUPPORTED_OPTIONAL_PARAMETER, b""),
    ),
    (
        "open-parameter-overrun",
        bgp_hex.message(1, open_body(params=bytes.fromhex("0208010400010001"))),
        (OPEN, OP.UNSPECIFIC, b""),
    ),
    (
        "open-opt-len-mismatch",
        bgp_hex.message(1, open_body()[:-1] + b"\x05" + b"\x02\x00"),
        (OPEN, OP.UNSPECIFIC, b""),
    ),
    (
        "open-mp-capability-length",
        bgp_hex.message(1, open_body(params=bytes.fromhex("02050103000100"))),
        (OPEN, OP.UNSPECIFIC, b""),
    ),
    ("open-route-refresh-length", bgp_hex.message(1, open_body(params=bytes.fromhex("0203020100"))), (OPEN, 0, b"")),
    (
        "update-withdrawn-too-long",
        bgp_hex.message(2, bytes.fromhex("00100000")),
        (UPDATE, U.MALFORMED_ATTRIBUTE_LIST, b""),
    ),
    (
        "update-attributes-too-long",
        update(b"", b"")[:19] + bytes.fromhex("00000005"),
        (UPDATE, U.MALFORMED_ATTRIBUTE_LIST, b""),
    ),
    ("duplicate-origin", update(MANDATORY + ORIGIN), (UPDATE, U.MALFORMED_ATTRIBUTE_LIST, b"")),
    (
        "unrecognized-well-known",
        update(MANDATORY + bytes.fromhex("40630101")),
        (UPDATE, U.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE, bytes.fromhex("40630101")),
    ),
    ("missing-origin", update(AS_PATH + NEXT_HOP), (UPDATE, U.MISSING_WELL_KNOWN_ATTRIBUTE, b"\x01")),
    ("missing-as-path", update(ORIGIN + NEXT_HOP), (UPDATE, U.MISSING_WELL_KNOWN_ATTRIBUTE, b"\x02")),
    ("missing-next-hop", update(ORIGIN + AS_PATH), (UPDATE, U.MISSING_WELL_KNOWN_ATTRIBUTE, b"\x03")),
    (
        "mp-reach-without-origin",
        update(AS_PATH + bytes.fromhex("800e160002011020010db80000000000000000000000010000"), b""),
        (UPDATE, U.MISSING_WELL_KNOWN_ATTRIBUTE, b"\x01"),
    ),
    (
        "origin-flagged-optional",
        update(bytes.fromhex("c0010100") + AS_PATH + NEXT_HOP),
        (UPDATE, U.ATTRIBUTE_FLAGS_ERROR, bytes.fromhex("c0010100")),
    ),
    (
        "origin-partial",
        update(bytes.fromhex("60010100") + AS_PATH + NEXT_HOP),
        (UPDATE, U.ATTRIBUTE_FLAGS_ERROR, bytes.fromhex("60010100")),
    ),
    (
        "med-flagged-well-known",
        update(MANDATORY + bytes.fromhex("40040400000001")),
        (UPDATE, U.ATTRIBUTE_FLAGS_ERROR, bytes.fromhex("40040400000001")),
    ),
    (
        "communities-not-transitive",
        update(MANDATORY + bytes.fromhex("800804fde90064")),
        (UPDATE, U.ATTRIBUTE_FLAGS_ERROR, bytes.fromhex("800804fde90064")),
    ),
    (
        "origin-length-2",
        update(bytes.fromhex("4001020000") + AS_PATH + NEXT_HOP),
        (UPDATE, U.ATTRIBUTE_LENGTH_ERROR, bytes.fromhex("4001020000")),
    ),
    (
        "next-hop-length-5",
        update(ORIGIN + AS_PATH + bytes.fromhex("400305c612000100")),
        (UPDATE, U.ATTRIBUTE_LENGTH_ERROR, bytes.fromhex("400305c612000100")),
    ),
    (
        "aggregator-length-6-with-4-octet-as",
        update(MANDATORY + bytes.fromhex("c00706fde9c6120001")),
        (UPDATE, U.ATTRIBUTE_LENGTH_ERROR, bytes.fromhex("c00706fde9c6120001")),
    ),
    (
        "attribute-runs-past-list",
        update(MANDATORY + bytes.fromhex("c0080800000001"), b""),
        (UPDATE, U.ATTRIBUTE_LENGTH_ERROR, bytes.fromhex("c0080800000001")),
    ),
    (
        "origin-3",
        update(bytes.fromhex("40010103") + AS_PATH + NEXT_HOP),
        (UPDATE, U.INVALID_ORIGIN_ATTRIBUTE, bytes.fromhex("40010103")),
    ),
    (
        "next-hop-0.0.0.0",
        update(ORIGIN + AS_PATH + bytes.fromhex("40030400000000")),
        (UPDATE, U.INVALID_NEXT_HOP_ATTRIBUTE, bytes.fromhex("40030400000000")),
    ),
    (
        "next-hop-multicast",
        update(ORIGIN + AS_PATH + bytes.fromhex("400304e0000001")),
        (UPDATE, U.INVALID_NEXT_HOP_ATTRIBUTE, bytes.fromhex("400304e0000001")),
    ),
    (
        "communities-length-3",
        update(MANDATORY + bytes.fromhex("c00803fde900")),
        (UPDATE, U.OPTIONAL_ATTRIBUTE_ERROR, bytes.fromhex("c00803fde900")),
    ),
    (
        "large-communities-length-8",
        update(MANDATORY + bytes.fromhex("c02008fa56ea0100000001")),
        (UPDATE, U.OPTIONAL_ATTRIBUTE_ERROR, bytes.fromhex("c02008fa56ea0100000001")),
    ),
    (
        "mp-reach-unsupported-family",
        update(ORIGIN + AS_PATH + bytes.fromhex("800e0900194604c612000100"), b""),
        (UPDATE, U.OPTIONAL_ATTRIBUTE_ERROR, bytes.fromhex("800e0900194604c612000100")),
    ),
    (
        "mp-reach-next-hop-length-5",
        update(ORIGIN + AS_PATH + bytes.fromhex("800e0a00020105c61200010000"), b""),
        (UPDATE, U.OPTIONAL_ATTRIBUTE_ERROR, bytes.fromhex("800e0a00020105c61200010000")),
    ),
    (
        "mp-unreach-short",
        update(bytes.fromhex("800f020002"), b""),
        (UPDATE, U.OPTIONAL_ATTRIBUTE_ERROR, bytes.fromhex("800f020002")),
    ),
    ("nlri-length-33", update(MANDATORY, bytes.fromhex("21c6120001ff")), (UPDATE, U.INVALID_NETWORK_FIELD, b"")),
    ("nlri-truncated", update(MANDATORY, bytes.fromhex("18c612")), (UPDATE, U.INVALID_NETWORK_FIELD, b"")),
    (
        "withdrawn-truncated",
        update(b"", b"", withdrawn=bytes.fromhex("20c612")),
        (UPDATE, U.INVALID_NETWORK_FIELD, b""),
    ),
    (
        "mp-unreach-prefix-length-129",
        update(bytes.fromhex("800f0400020181"), b""),
        (UPDATE, U.INVALID_NETWORK_FIELD, b""),
    ),
    (
        "as-path-segment-type-5",
        update(ORIGIN + bytes.fromhex("40020605010000fde9") + NEXT_HOP),
        (UPDATE, U.MALFORMED_AS_PATH, b""),
    ),
    (
        "as-path-segment-overrun",
        update(ORIGIN + bytes.fromhex("40020602020000fde9") + NEXT_HOP),
        (UPDATE, U.MALFORMED_AS_PATH, b""),
    ),
    (
        "as-path-empty-segment",
        update(ORIGIN + bytes.fromhex("4002020200") + NEXT_HOP),
        (UPDATE, U.MALFORMED_AS_PATH, b""),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decode_error_maps_to_rfc_notification(raw: bytes, expected: tuple[int, int, bytes]) -> None:
    with pytest.raises(errors.BgpError) as caught:
        codec.decode_one(raw, four_octet_as=True)
    assert caught.value.notification_fields() == expected


def test_two_octet_as_path_is_read_with_two_octets() -> None:
    raw = update(ORIGIN + bytes.fromhex("4002040201fde9") + NEXT_HOP)
    message = codec.decode_one(raw, four_octet_as=False)
    assert message.attributes.as_path is not None  # type: ignore[union-attr]
    with pytest.raises(errors.BgpError) as caught:
        codec.decode_one(raw, four_octet_as=True)
    assert caught.value.notification_fields() == (UPDATE, U.MALFORMED_AS_PATH, b"")


def test_unknown_optional_attribute_is_kept() -> None:
    message = codec.decode_one(update(MANDATORY + bytes.fromhex("e0630101")))
    unknown = message.attributes.unknown  # type: ignore[union-attr]
    assert [(u.type_code, u.flags, u.value) for u in unknown] == [(0x63, 0xE0, b"\x01")]


def test_bgp_error_is_a_protocol_error_of_the_tree() -> None:
    from metalhorn.common import errors as mh_errors

    error = errors.BgpError(3, 1, reason="x")
    assert isinstance(error, mh_errors.ProtocolError)
    assert error.code == mh_errors.ErrorCode.PROTOCOL
    assert "UPDATE_MESSAGE/MALFORMED_ATTRIBUTE_LIST" in str(error)


def test_framer_is_poisoned_after_a_header_error() -> None:
    framer = header.Framer()
    with pytest.raises(errors.BgpError):
        framer.feed(bgp_hex.message(9, b""))
    with pytest.raises(errors.BgpError) as caught:
        framer.feed(codec.encode(codec.simple.Keepalive()))
    assert caught.value.notification_fields() == (HEADER, H.BAD_MESSAGE_TYPE, b"\x09")


PEER = open_message.Open(my_as=65001, hold_time=90, bgp_id=ipaddress.IPv4Address("198.18.0.2"))
LOCAL_ID = ipaddress.IPv4Address("198.18.0.1")


@pytest.mark.parametrize(
    ("kwargs", "subcode"),
    [
        ({"expected_asn": 65002, "local_asn": 65000, "local_bgp_id": LOCAL_ID}, OP.BAD_PEER_AS),
        (
            {"expected_asn": 65001, "local_asn": 65001, "local_bgp_id": ipaddress.IPv4Address("198.18.0.2")},
            OP.BAD_BGP_IDENTIFIER,
        ),
        (
            {"expected_asn": 65001, "local_asn": 65000, "local_bgp_id": LOCAL_ID, "min_hold_time": 120},
            OP.UNACCEPTABLE_HOLD_TIME,
        ),
    ],
    ids=["wrong-peer-as", "ibgp-same-identifier", "hold-below-minimum"],
)
def test_check_peer(kwargs: dict[str, object], subcode: int) -> None:
    with pytest.raises(errors.BgpError) as caught:
        open_message.check_peer(PEER, **kwargs)  # type: ignore[arg-type]
    assert caught.value.notification_fields() == (OPEN, subcode, b"")


def test_check_peer_accepts_a_good_open() -> None:
    open_message.check_peer(PEER, expected_asn=65001, local_asn=65000, local_bgp_id=LOCAL_ID, min_hold_time=3)
    open_message.check_peer(PEER, expected_asn=None, local_asn=65001, local_bgp_id=LOCAL_ID)
