"""Golden wire bytes for every BGP message type, and decoding of hand-written "captures" (data/bgp/handwritten/:
written by hand after what routers send, not recorded; the real recordings are tested in test_bgp_captured.py)."""

from __future__ import annotations

import ipaddress

import bgp_hex
import pytest

from metalhorn.lb.bgp.messages import attributes as attrs
from metalhorn.lb.bgp.messages import capabilities as caps
from metalhorn.lb.bgp.messages import codec, errors, nlri, open_message, simple, update

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network
NH = ipaddress.IPv4Address("198.18.0.1")

FULL_ATTRIBUTES = attrs.PathAttributes(
    origin=attrs.Origin.IGP,
    as_path=(
        attrs.AsPathSegment(attrs.SegmentType.AS_SEQUENCE, (65001, 4200000001)),
        attrs.AsPathSegment(attrs.SegmentType.AS_SET, (64496, 64497)),
    ),
    next_hop=NH,
    med=10,
    local_pref=200,
    atomic_aggregate=True,
    aggregator=attrs.Aggregator(65001, ipaddress.IPv4Address("198.18.0.9")),
    communities=(attrs.community(65001, 100), attrs.NO_EXPORT),
    large_communities=(attrs.LargeCommunity(4200000001, 7, 8),),
    unknown=(attrs.UnknownAttribute(99, 0xC0, b"\x01\x02\x03"),),
)

# (file, message, four_octet_as, what it shows)
GOLDEN: list[tuple[str, codec.Message, bool, str]] = [
    ("keepalive.hex", simple.Keepalive(), True, "KEEPALIVE (RFC 4271 4.4)"),
    (
        "open_minimal.hex",
        open_message.Open(my_as=65001, hold_time=90, bgp_id=NH),
        True,
        "OPEN without optional parameters (RFC 4271 4.2)",
    ),
    (
        "open_as4.hex",
        open_message.Open.build(
            asn=4200000001,
            hold_time=90,
            bgp_id=NH,
            capabilities=(
                caps.Multiprotocol(nlri.Afi.IPV4, nlri.Safi.UNICAST),
                caps.Multiprotocol(nlri.Afi.IPV6, nlri.Safi.UNICAST),
                caps.RouteRefresh(),
                caps.Unknown(64, b"\x00\x78"),
            ),
        ),
        True,
        "OPEN of ASN 4200000001: My AS = AS_TRANS, MP v4/v6, route refresh, GR kept verbatim, 4-octet AS",
    ),
    (
        "update_ipv4.hex",
        update.Update(
            withdrawn=(V4("198.18.200.0/24"),),
            attributes=FULL_ATTRIBUTES,
            nlri=(V4("198.18.100.0/24"), V4("198.18.101.10/32"), V4("198.18.0.0/15")),
        ),
        True,
        "UPDATE with every attribute, 4-octet ASNs",
    ),
    (
        "update_ipv4_as2.hex",
        update.Update(
            attributes=attrs.PathAttributes(
                origin=attrs.Origin.INCOMPLETE,
                as_path=attrs.as_sequence(65001, 64512),
                next_hop=NH,
                aggregator=attrs.Aggregator(65001, NH),
            ),
            nlri=(V4("198.18.100.0/24"),),
        ),
        False,
        "UPDATE to a 2-octet-AS peer: 2-octet AS_PATH and AGGREGATOR",
    ),
    (
        "update_ipv6.hex",
        update.Update(
            attributes=attrs.PathAttributes(
                origin=attrs.Origin.IGP,
                as_path=attrs.as_sequence(4200000001),
                mp_reach=attrs.MpReach(
                    nlri.Afi.IPV6,
                    nlri.Safi.UNICAST,
                    (ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("fe80::1")),
                    (V6("2001:db8:0:64::/64"), V6("2001:db8::5/128")),
                ),
            )
        ),
        True,
        "UPDATE with MP_REACH_NLRI IPv6, global + link-local next hop (RFC 4760, RFC 2545)",
    ),
    (
        "update_withdraw_ipv6.hex",
        update.Update(
            attributes=attrs.PathAttributes(
                mp_unreach=attrs.MpUnreach(nlri.Afi.IPV6, nlri.Safi.UNICAST, (V6("2001:db8:0:64::/64"),))
            )
        ),
        True,
        "UPDATE with MP_UNREACH_NLRI IPv6",
    ),
    ("update_end_of_rib_ipv4.hex", update.end_of_rib(nlri.Afi.IPV4), True, "IPv4 End-of-RIB: empty UPDATE"),
    (
        "notification_hold_timer.hex",
        simple.Notification(errors.ErrorCode.HOLD_TIMER_EXPIRED, 0),
        True,
        "NOTIFICATION Hold Timer Expired (RFC 4271 4.5)",
    ),
    (
        "notification_bad_length.hex",
        simple.Notification(errors.ErrorCode.MESSAGE_HEADER, errors.HeaderSubcode.BAD_MESSAGE_LENGTH, b"\x10\x01"),
        True,
        "NOTIFICATION Bad Message Length carrying the bad Length field",
    ),
    ("route_refresh_ipv6.hex", simple.RouteRefresh(nlri.Afi.IPV6, nlri.Safi.UNICAST), True, "ROUTE-REFRESH (RFC 2918)"),
]


@pytest.mark.parametrize(("name", "message", "four_octet_as", "comment"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bytes(name: str, message: codec.Message, four_octet_as: bool, comment: str) -> None:
    wire = codec.encode(message, four_octet_as=four_octet_as)
    if bgp_hex.UPDATE_GOLDEN:
        bgp_hex.write_hex(name, wire, comment=comment)
    assert wire == bgp_hex.read_hex(name)
    assert codec.decode_one(wire, four_octet_as=four_octet_as) == message


def test_keepalive_is_the_bare_header() -> None:
    assert codec.encode(simple.Keepalive()) == b"\xff" * 16 + b"\x00\x13\x04"


def test_as4_open_layout_by_hand() -> None:
    wire = bgp_hex.read_hex("open_as4.hex")
    assert wire[19:29].hex() == "045ba0005ac61200011a"  # version, AS_TRANS, 90 s, id, 26 octets
    assert wire[-6:].hex() == "4104fa56ea01"  # 4-octet AS capability last


def test_frr_open_capture() -> None:
    message = codec.decode_one(bgp_hex.read_hex("handwritten/capture_frr_open.hex"))
    assert isinstance(message, open_message.Open)
    assert (message.asn, message.my_as, message.hold_time) == (65001, 65001, 180)
    assert message.bgp_id == ipaddress.IPv4Address("198.18.0.1")
    assert message.families() == {(1, 1), (2, 1)}
    assert message.route_refresh and message.four_octet_as
    unknown = {c.code: c.value for c in message.capabilities if isinstance(c, caps.Unknown)}
    assert unknown == {
        caps.Code.ROUTE_REFRESH_OLD: b"",
        caps.Code.ENHANCED_ROUTE_REFRESH: b"",
        caps.Code.ADD_PATH: bytes.fromhex("0001010100020101"),
        caps.Code.FQDN: b"\x04frr1\x03lab",
        caps.Code.GRACEFUL_RESTART: b"\x40\x78",
    }
    # Re-encoding groups the capabilities into one parameter; the decoded value is the same.
    assert codec.decode_one(codec.encode(message)) == message


def test_single_parameter_open_capture() -> None:
    message = codec.decode_one(bgp_hex.read_hex("handwritten/capture_open_single_param.hex"))
    assert isinstance(message, open_message.Open)
    assert (message.my_as, message.asn, message.hold_time) == (open_message.AS_TRANS, 4200000001, 90)
    assert message.families() == {(1, 1), (2, 1)}
    assert codec.encode(message) == bgp_hex.read_hex("handwritten/capture_open_single_param.hex")


def test_frr_ipv4_update_capture() -> None:
    message = codec.decode_one(bgp_hex.read_hex("handwritten/capture_frr_update_ipv4.hex"))
    assert isinstance(message, update.Update)
    a = message.attributes
    assert a.origin == attrs.Origin.IGP
    assert a.as_path == attrs.as_sequence(65001, 65002)
    assert a.next_hop == NH and a.med == 0 and a.local_pref is None
    assert a.communities == (attrs.community(65001, 100), attrs.NO_EXPORT)
    assert a.large_communities == (attrs.LargeCommunity(4200000001, 1, 2),)
    assert message.nlri == (V4("198.18.100.0/24"), V4("198.18.101.10/32"))
    assert not message.is_end_of_rib


def test_frr_ipv6_update_capture() -> None:
    message = codec.decode_one(bgp_hex.read_hex("handwritten/capture_frr_update_ipv6.hex"))
    assert isinstance(message, update.Update)
    reach = message.attributes.mp_reach
    assert reach is not None
    assert reach.next_hops == (ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("fe80::1"))
    assert reach.nlri == (V6("2001:db8:0:64::/64"),)
    assert message.attributes.next_hop is None and message.nlri == ()


def test_end_of_rib_captures() -> None:
    v6 = codec.decode_one(bgp_hex.read_hex("handwritten/capture_end_of_rib_ipv6.hex"))
    assert isinstance(v6, update.Update) and v6.is_end_of_rib
    assert v6 == update.end_of_rib(nlri.Afi.IPV6)
    assert update.end_of_rib(nlri.Afi.IPV4).is_end_of_rib


def test_shutdown_notification_capture() -> None:
    message = codec.decode_one(bgp_hex.read_hex("handwritten/capture_notification_shutdown.hex"))
    assert message == simple.Notification(6, 2, b"\x0bmaintenance")
    assert isinstance(message, simple.Notification)
    assert message.describe() == "CEASE/ADMINISTRATIVE_SHUTDOWN"
