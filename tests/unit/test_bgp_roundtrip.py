"""Hypothesis round trips of every BGP message type, decoder fuzzing, the framer and UPDATE packing."""

from __future__ import annotations

import ipaddress

import bgp_hex
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp.messages import attributes as attrs
from metalhorn.lb.bgp.messages import capabilities as caps
from metalhorn.lb.bgp.messages import codec, errors, header, nlri, open_message, packing, simple, update

# Documentation and private numbers only (RFC 5737/5398/6996/3849 and the benchmarking range 198.18.0.0/15).
asns = st.one_of(st.integers(64496, 64511), st.integers(65000, 65534), st.integers(4200000000, 4294967294))
asns2 = st.one_of(st.integers(64496, 64511), st.integers(65000, 65534))
v4_addresses = st.integers(0xC6120000, 0xC613FFFF).map(ipaddress.IPv4Address)
v6_addresses = st.integers(0, 2**96 - 1).map(lambda low: ipaddress.IPv6Address((0x20010DB8 << 96) | low))
v4_prefixes = st.builds(
    lambda a, n: ipaddress.IPv4Network((int(a), n), strict=False), v4_addresses, st.integers(15, 32)
)
v6_prefixes = st.builds(
    lambda a, n: ipaddress.IPv6Network((int(a), n), strict=False), v6_addresses, st.integers(32, 128)
)
u32 = st.integers(0, 2**32 - 1)
bgp_ids = st.integers(1, 2**32 - 1).map(ipaddress.IPv4Address)

capabilities = st.one_of(
    st.builds(caps.Multiprotocol, st.sampled_from([1, 2, 25]), st.sampled_from([1, 2, 70, 128])),
    st.just(caps.RouteRefresh()),
    st.builds(caps.FourOctetAs, asns),
    st.builds(
        caps.Unknown,
        st.integers(0, 255).filter(lambda c: c not in (1, 2, 65)),
        st.binary(max_size=40),
    ),
)

opens = st.builds(
    open_message.Open,
    my_as=asns2,
    hold_time=st.one_of(st.just(0), st.integers(3, 65535)),
    bgp_id=bgp_ids,
    capabilities=st.lists(capabilities, max_size=20).map(tuple),
)

segments = st.builds(
    attrs.AsPathSegment, st.sampled_from(list(attrs.SegmentType)), st.lists(asns, min_size=1, max_size=8).map(tuple)
)
unknown_attributes = st.lists(
    st.builds(
        attrs.UnknownAttribute,
        st.integers(0, 255).filter(lambda c: c not in attrs.EXPECTED_FLAGS),
        st.sampled_from([0x80, 0xC0, 0xE0]),
        st.binary(max_size=300),
    ),
    max_size=3,
    unique_by=lambda u: u.type_code,
).map(lambda items: tuple(sorted(items, key=lambda u: u.type_code)))


@st.composite
def path_attributes(draw: st.DrawFn, *, announce_v4: bool) -> attrs.PathAttributes:
    mp_reach = None
    if draw(st.booleans()):
        hops = draw(st.sampled_from([1, 2]))
        mp_reach = attrs.MpReach(
            nlri.Afi.IPV6,
            nlri.Safi.UNICAST,
            tuple(draw(st.lists(v6_addresses, min_size=hops, max_size=hops))),
            tuple(draw(st.lists(v6_prefixes, max_size=10))),
        )
    mp_unreach = None
    if draw(st.booleans()):
        mp_unreach = attrs.MpUnreach(nlri.Afi.IPV6, nlri.Safi.UNICAST, tuple(draw(st.lists(v6_prefixes, max_size=10))))
    needs = announce_v4 or mp_reach is not None
    optional = st.booleans()
    return attrs.PathAttributes(
        origin=draw(st.sampled_from(list(attrs.Origin))) if needs or draw(optional) else None,
        as_path=tuple(draw(st.lists(segments, max_size=3))) if needs or draw(optional) else None,
        next_hop=draw(v4_addresses) if announce_v4 or draw(optional) else None,
        med=draw(st.none() | u32),
        local_pref=draw(st.none() | u32),
        atomic_aggregate=draw(st.booleans()),
        aggregator=draw(st.none() | st.builds(attrs.Aggregator, asns, v4_addresses)),
        communities=tuple(draw(st.lists(u32, max_size=5))),
        large_communities=tuple(draw(st.lists(st.builds(attrs.LargeCommunity, asns, u32, u32), max_size=3))),
        mp_reach=mp_reach,
        mp_unreach=mp_unreach,
        unknown=draw(unknown_attributes),
    )


@st.composite
def updates(draw: st.DrawFn) -> update.Update:
    announced = tuple(draw(st.lists(v4_prefixes, max_size=10)))
    return update.Update(
        withdrawn=tuple(draw(st.lists(v4_prefixes, max_size=10))),
        attributes=draw(path_attributes(announce_v4=bool(announced))),
        nlri=announced,
    )


notifications = st.builds(simple.Notification, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=200))
refreshes = st.builds(simple.RouteRefresh, st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255))
messages = st.one_of(opens, updates(), notifications, refreshes, st.just(simple.Keepalive()))


@given(opens)
def test_open_round_trip(message: open_message.Open) -> None:
    assert codec.decode_one(codec.encode(message)) == message


@given(updates())
def test_update_round_trip_four_octet(message: update.Update) -> None:
    assert codec.decode_one(codec.encode(message, four_octet_as=True), four_octet_as=True) == message


@given(updates())
def test_update_round_trip_two_octet(message: update.Update) -> None:
    """With 2-octet ASNs only, the 2-octet encoding round-trips too."""
    small = message.attributes.as_path is None or all(a <= 0xFFFF for s in message.attributes.as_path for a in s.asns)
    aggregator = message.attributes.aggregator
    if small and (aggregator is None or aggregator.asn <= 0xFFFF):
        assert codec.decode_one(codec.encode(message, four_octet_as=False), four_octet_as=False) == message


@given(st.one_of(notifications, refreshes, st.just(simple.Keepalive())))
def test_simple_round_trip(message: codec.Message) -> None:
    assert codec.decode_one(codec.encode(message)) == message


@settings(max_examples=40)
@given(st.lists(messages, max_size=6), st.integers(1, 80))
def test_framer_in_any_chunking(items: list[codec.Message], chunk: int) -> None:
    stream = b"".join(codec.encode(m) for m in items)
    framer = header.Framer()
    raws: list[header.RawMessage] = []
    for i in range(0, len(stream), chunk):
        raws += framer.feed(stream[i : i + chunk])
    assert [codec.decode(r) for r in raws] == items
    assert framer.buffered == 0


def test_large_as_path_for_old_peer_uses_as_trans_and_as4_path() -> None:
    message = update.Update(
        attributes=attrs.PathAttributes(
            origin=attrs.Origin.IGP,
            as_path=attrs.as_sequence(4200000001, 65001),
            next_hop=ipaddress.IPv4Address("198.18.0.1"),
        ),
        nlri=(ipaddress.IPv4Network("198.18.1.0/24"),),
    )
    decoded = codec.decode_one(codec.encode(message, four_octet_as=False), four_octet_as=False)
    assert isinstance(decoded, update.Update)
    assert decoded.attributes.as_path == attrs.as_sequence(attrs.AS_TRANS, 65001)
    (as4_path,) = decoded.attributes.unknown
    assert as4_path.type_code == attrs.AttrType.AS4_PATH
    assert as4_path.value == bytes.fromhex("0202fa56ea010000fde9")


def test_open_with_many_capabilities_uses_extended_parameters() -> None:
    message = open_message.Open.build(
        asn=65001,
        hold_time=90,
        bgp_id=ipaddress.IPv4Address("198.18.0.1"),
        capabilities=tuple(caps.Unknown(200, bytes(20)) for _ in range(15)),
    )
    wire = codec.encode(message)
    assert wire[28] == 255 and wire[29] == 255  # RFC 9072 marker
    assert codec.decode_one(wire) == message


def test_long_as_path_is_split_into_segments() -> None:
    path = attrs.as_sequence(*([65001] * 300))
    message = update.Update(attributes=attrs.PathAttributes(as_path=path))
    decoded = codec.decode_one(codec.encode(message))
    assert isinstance(decoded, update.Update)
    assert decoded.attributes.as_path is not None
    assert [len(s.asns) for s in decoded.attributes.as_path] == [255, 45]


def test_encoding_refuses_what_the_rfc_forbids() -> None:
    with pytest.raises(mh_errors.InvalidArgument):
        codec.encode(open_message.Open(my_as=65001, hold_time=2, bgp_id=ipaddress.IPv4Address("198.18.0.1")))
    with pytest.raises(mh_errors.InvalidArgument):
        codec.encode(simple.Notification(6, 0, bytes(5000)))


# -- fuzzing: nothing but BgpError may come out of the decoder -------------------------------------------------


def _decode_all(data: bytes, *, four_octet_as: bool) -> None:
    try:
        for raw in header.Framer().feed(data):
            codec.decode(raw, four_octet_as=four_octet_as)
    except errors.BgpError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_raise_only_bgp_error(data: bytes, four_octet_as: bool) -> None:
    _decode_all(data, four_octet_as=four_octet_as)


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(str(p.relative_to(bgp_hex.DATA)) for p in bgp_hex.DATA.rglob("*.hex"))),
    st.data(),
    st.booleans(),
)
def test_mutated_messages_raise_only_bgp_error(name: str, data: st.DataObject, four_octet_as: bool) -> None:
    wire = bytearray(bgp_hex.read_hex(name))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(19, max(19, len(wire) - 1)))
        if index < len(wire):
            wire[index] = data.draw(st.integers(0, 255))
    _decode_all(bytes(wire), four_octet_as=four_octet_as)


@settings(max_examples=200)
@given(st.binary(min_size=0, max_size=120), st.sampled_from([1, 2, 3, 4, 5]), st.booleans())
def test_random_bodies_raise_only_bgp_error(body: bytes, kind: int, four_octet_as: bool) -> None:
    _decode_all(bgp_hex.message(kind, body), four_octet_as=four_octet_as)


# -- packing -----------------------------------------------------------------------------------------------------

BASE = attrs.PathAttributes(
    origin=attrs.Origin.IGP,
    as_path=attrs.as_sequence(4200000001),
    next_hop=ipaddress.IPv4Address("198.18.0.1"),
    local_pref=100,
    communities=(attrs.community(65001, 1),),
)
HOPS = (ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("fe80::1"))


def _check(messages: list[update.Update]) -> tuple[list[nlri.Prefix], list[nlri.Prefix]]:
    announced: list[nlri.Prefix] = []
    withdrawn: list[nlri.Prefix] = []
    for message in messages:
        wire = codec.encode(message)
        assert len(wire) <= header.MAX_MESSAGE_SIZE
        assert codec.decode_one(wire) == message
        announced += message.nlri
        withdrawn += message.withdrawn
        if message.attributes.mp_reach is not None:
            announced += message.attributes.mp_reach.nlri
            assert message.attributes.next_hop is None
        if message.attributes.mp_unreach is not None:
            withdrawn += message.attributes.mp_unreach.withdrawn
    return announced, withdrawn


def test_packing_splits_at_4096_octets() -> None:
    v4 = [ipaddress.IPv4Network((0xC6120000 + i, 32)) for i in range(3000)]
    v6 = [ipaddress.IPv6Network(((0x20010DB8 << 96) + i, 128)) for i in range(700)]
    gone = [ipaddress.IPv6Network(((0x20010DB8 << 96) + (1 << 64) + i, 128)) for i in range(400)]
    out = packing.build_updates(
        attributes_=BASE, announce=v4 + v6, withdraw=gone + v4[:1500], ipv6_next_hops=HOPS, four_octet_as=True
    )
    announced, withdrawn = _check(out)
    assert announced == v4 + v6
    assert sorted(withdrawn, key=str) == sorted(gone + v4[:1500], key=str)
    full = [len(codec.encode(m)) for m in out if m.nlri]
    assert max(full) > 4000  # packed tight, not one prefix per message
    assert len([m for m in out if m.nlri]) == 4  # 3000 * 5 octets over ~4040 octets each


@given(
    st.lists(st.one_of(v4_prefixes, v6_prefixes), max_size=400),
    st.lists(st.one_of(v4_prefixes, v6_prefixes), max_size=400),
)
@settings(max_examples=30)
def test_packing_keeps_every_prefix(announce: list[nlri.Prefix], withdraw: list[nlri.Prefix]) -> None:
    out = packing.build_updates(
        attributes_=BASE, announce=announce, withdraw=withdraw, ipv6_next_hops=HOPS[:1], four_octet_as=False
    )
    announced, withdrawn = _check(out)
    key = lambda p: (p.version, str(p))  # noqa: E731
    assert sorted(announced, key=key) == sorted(announce, key=key)
    assert sorted(withdrawn, key=key) == sorted(withdraw, key=key)


def test_packing_needs_next_hops() -> None:
    with pytest.raises(mh_errors.InvalidArgument):
        packing.build_updates(
            attributes_=attrs.PathAttributes(origin=attrs.Origin.IGP, as_path=()),
            announce=[ipaddress.IPv4Network("198.18.0.0/24")],
            four_octet_as=True,
        )
    with pytest.raises(mh_errors.InvalidArgument):
        packing.build_updates(attributes_=BASE, announce=[ipaddress.IPv6Network("2001:db8::/32")], four_octet_as=True)
