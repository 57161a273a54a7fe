"""Decoding of real BGP messages recorded from FRR, BIRD 2 and GoBGP (tests/unit/data/bgp/captured/).

The files were recorded by tests/linux/bgp_capture.py (its docstring says how; each file's header names the
router version). The router, AS 4200000001 at 198.18.64.1, sent them to a recording peer over iBGP (AS
4200000001, files without a suffix) and eBGP (AS 64513, ``-ebgp``); both OPENs carried the 4-octet AS capability,
so every file is decoded with ``four_octet_as=True``. Checked here:

- every message decodes, and our encoding of the decoded value equals the router's bytes up to the two ways a
  sender may legally differ from our canonical encoding (``canonical_form``): FRR and BIRD set the Extended
  Length flag on short MP_REACH_NLRI / MP_UNREACH_NLRI (FRR on AS_PATH too) and both put MP_REACH_NLRI first
  (we write every attribute in type order, Extended Length only above 255 octets); FRR sends one capability per
  OPEN optional parameter (we group them into one). ``NOT_BYTE_IDENTICAL`` lists exactly those files; all others
  re-encode byte for byte;
- the decoded values are what the router was told to send: prefixes, communities, large community, MED,
  LOCAL_PREF (iBGP only), next hops, AS_PATH, capabilities, the withdraws, End-of-RIB, ROUTE-REFRESH and the
  Cease / Administrative Shutdown NOTIFICATION with its shutdown communication (RFC 9003).
"""

from __future__ import annotations

import ipaddress
import re
import struct

import bgp_hex
import pytest

from metalhorn.lb.bgp.messages import attributes as attrs
from metalhorn.lb.bgp.messages import capabilities as caps
from metalhorn.lb.bgp.messages import codec, nlri, open_message, simple, update

CAPTURED = bgp_hex.DATA / "captured"
FILES = sorted(p.name for p in CAPTURED.glob("*.hex"))
ROUTERS = ("frr", "bird", "gobgp")
SESSIONS = ("", "-ebgp")  # iBGP, eBGP

ROUTER_ASN = 4200000001
ROUTER_ID = ipaddress.IPv4Address("198.18.64.1")
NEXT_HOP4 = ipaddress.IPv4Address("198.18.64.1")
NEXT_HOP6 = ipaddress.IPv6Address("2001:db8:64::1")
KEEP4, GONE4 = ipaddress.IPv4Network("198.18.100.0/24"), ipaddress.IPv4Network("198.18.101.10/32")
KEEP6, GONE6 = ipaddress.IPv6Network("2001:db8:100::/64"), ipaddress.IPv6Network("2001:db8:101::10/128")
COMMUNITIES = (attrs.community(65000, 100), attrs.community(65000, 200))
LARGE = (attrs.LargeCommunity(ROUTER_ASN, 1, 2),)

# Files whose bytes differ from our canonical encoding, and why (canonical_form undoes exactly this).
_FRR_ATTRS = "FRR: Extended Length on AS_PATH and MP_(UN)REACH_NLRI however short; MP_REACH_NLRI first"
_BIRD_ATTRS = "BIRD: Extended Length on MP_REACH_NLRI / MP_UNREACH_NLRI however short; MP_REACH_NLRI first"
NOT_BYTE_IDENTICAL = {
    **{f"frr-open{s}.hex": "FRR: one capability per optional parameter" for s in SESSIONS},
    **{f"frr-{what}{s}.hex": _FRR_ATTRS for what in ("update-ipv4", "update-ipv6", "withdraw-ipv6") for s in SESSIONS},
    **{f"bird-{what}{s}.hex": _BIRD_ATTRS for what in ("update-ipv6", "withdraw-ipv6") for s in SESSIONS},
}

# What each router sent on each session. GoBGP's "neighbor softresetin" re-evaluates its own Adj-RIB-In and sends
# no ROUTE-REFRESH; GoBGP sends one MP_REACH_NLRI prefix per UPDATE, hence update-ipv6-2.
_COMMON = {"open", "keepalive", "update-ipv4", "update-ipv6", "withdraw-ipv4", "withdraw-ipv6"}
_COMMON |= {"end-of-rib-ipv4", "end-of-rib-ipv6", "notification-cease"}
KINDS = {
    "frr": _COMMON | {"route-refresh-ipv4", "route-refresh-ipv6"},
    "bird": _COMMON | {"route-refresh-ipv4", "route-refresh-ipv6"},
    "gobgp": _COMMON | {"update-ipv6-2"},
}
# Capabilities each router offers beyond MP v4/v6, route refresh and 4-octet AS (kept as caps.Unknown).
UNKNOWN_CAPABILITIES = {
    "frr": {
        caps.Code.ROUTE_REFRESH_OLD,
        caps.Code.ENHANCED_ROUTE_REFRESH,
        caps.Code.EXTENDED_MESSAGE,
        caps.Code.ADD_PATH,
        caps.Code.FQDN,
        caps.Code.GRACEFUL_RESTART,
        71,  # long-lived graceful restart (RFC 9494)
    },
    "bird": {caps.Code.GRACEFUL_RESTART, caps.Code.ENHANCED_ROUTE_REFRESH, 71},
    "gobgp": {caps.Code.FQDN, caps.Code.GRACEFUL_RESTART, caps.Code.EXTENDED_NEXT_HOP},
}


def load(name: str) -> bytes:
    return bgp_hex.read_hex(f"captured/{name}")


def decode(name: str) -> codec.Message:
    return codec.decode_one(load(name), four_octet_as=True)


def _canonical_update(body: bytes) -> bytes:
    (withdrawn_length,) = struct.unpack_from(">H", body)
    start = 2 + withdrawn_length
    (attrs_length,) = struct.unpack_from(">H", body, start)
    data, rest = body[start + 2 : start + 2 + attrs_length], body[start + 2 + attrs_length :]
    items: list[tuple[int, int, bytes]] = []
    offset = 0
    while offset < len(data):
        flags, type_code = data[offset], data[offset + 1]
        if flags & attrs.Flag.EXTENDED_LENGTH:
            (length,) = struct.unpack_from(">H", data, offset + 2)
            offset += 4
        else:
            length = data[offset + 2]
            offset += 3
        items.append((type_code, flags & ~attrs.Flag.EXTENDED_LENGTH, data[offset : offset + length]))
        offset += length
    out = b""
    for type_code, flags, value in sorted(items, key=lambda item: item[0]):
        if len(value) > 0xFF:
            out += struct.pack(">BBH", flags | attrs.Flag.EXTENDED_LENGTH, type_code, len(value)) + value
        else:
            out += bytes((flags, type_code, len(value))) + value
    return body[:start] + struct.pack(">H", len(out)) + out + rest


def _canonical_open(body: bytes) -> bytes:
    fixed, params = body[:9], body[10:]
    capabilities = b""
    offset = 0
    while offset < len(params):
        kind, length = params[offset], params[offset + 1]
        assert kind == open_message.PARAM_CAPABILITIES
        capabilities += params[offset + 2 : offset + 2 + length]
        offset += 2 + length
    grouped = bytes((open_message.PARAM_CAPABILITIES, len(capabilities))) + capabilities
    return fixed + bytes((len(grouped),)) + grouped


def canonical_form(wire: bytes) -> bytes:
    """``wire`` with attributes in type order, Extended Length only when needed, capabilities in one parameter."""
    kind, body = wire[18], wire[19:]
    if kind == 2:
        body = _canonical_update(body)
    elif kind == 1:
        body = _canonical_open(body)
    return bgp_hex.message(kind, body)


def test_every_router_and_session_was_recorded() -> None:
    for router in ROUTERS:
        for suffix in SESSIONS:
            found = {n.removeprefix(f"{router}-").removesuffix(".hex") for n in FILES if n.startswith(f"{router}-")}
            kinds = {k.removesuffix("-ebgp") for k in found if k.endswith("-ebgp") == bool(suffix)}
            assert kinds == KINDS[router], (router, suffix or "ibgp")


@pytest.mark.parametrize("name", FILES)
def test_capture_says_where_it_came_from(name: str) -> None:
    first = (CAPTURED / name).read_text().splitlines()[0]
    version = {"frr": r"FRR 8\.", "bird": r"BIRD 2\.", "gobgp": r"GoBGP 3\."}[name.split("-", maxsplit=1)[0]]
    assert re.match(rf"# Recorded from {version}\S* with tests/linux/bgp_capture\.py", first), first


@pytest.mark.parametrize("name", FILES)
def test_capture_decodes_and_reencodes(name: str) -> None:
    wire = load(name)
    message = decode(name)
    ours = codec.encode(message, four_octet_as=True)
    assert ours == canonical_form(wire)
    assert (ours == wire) == (name not in NOT_BYTE_IDENTICAL), NOT_BYTE_IDENTICAL.get(name, "expected identical")
    assert codec.decode_one(ours, four_octet_as=True) == message


def test_the_non_canonical_list_names_only_captured_files() -> None:
    assert set(NOT_BYTE_IDENTICAL) <= set(FILES)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("suffix", SESSIONS)
def test_open_carries_the_routers_capabilities(router: str, suffix: str) -> None:
    message = decode(f"{router}-open{suffix}.hex")
    assert isinstance(message, open_message.Open)
    assert (message.version, message.my_as, message.asn) == (4, open_message.AS_TRANS, ROUTER_ASN)
    assert message.hold_time == 9 and message.bgp_id == ROUTER_ID
    assert message.families() == {(nlri.Afi.IPV4, nlri.Safi.UNICAST), (nlri.Afi.IPV6, nlri.Safi.UNICAST)}
    assert message.route_refresh and message.four_octet_as
    unknown = {c.code for c in message.capabilities if isinstance(c, caps.Unknown)}
    assert unknown == UNKNOWN_CAPABILITIES[router]


def _updates(router: str, what: str, suffix: str) -> list[update.Update]:
    out = []
    for name in FILES:
        if re.fullmatch(rf"{router}-{what}(-\d)?{suffix}\.hex", name):
            message = decode(name)
            assert isinstance(message, update.Update)
            out.append(message)
    assert out, (router, what, suffix)
    return out


def _check_path_attributes(a: attrs.PathAttributes, suffix: str) -> None:
    assert a.origin == attrs.Origin.IGP
    assert a.med == 50
    assert a.communities == COMMUNITIES
    assert a.large_communities == LARGE
    assert not a.atomic_aggregate and a.aggregator is None and a.unknown == ()
    if suffix:  # eBGP: our AS prepended (4 octets), no LOCAL_PREF
        assert a.as_path == attrs.as_sequence(ROUTER_ASN)
        assert a.local_pref is None
    else:  # iBGP, locally originated: empty AS_PATH, LOCAL_PREF
        assert a.as_path == ()
        assert a.local_pref == 250


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("suffix", SESSIONS)
def test_ipv4_update_has_what_the_router_was_told(router: str, suffix: str) -> None:
    announced: set[ipaddress.IPv4Network] = set()
    for message in _updates(router, "update-ipv4", suffix):
        a = message.attributes
        _check_path_attributes(a, suffix)
        assert a.next_hop == NEXT_HOP4
        assert a.mp_reach is None and a.mp_unreach is None and message.withdrawn == ()
        announced |= set(message.nlri)
    assert announced == {KEEP4, GONE4}


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("suffix", SESSIONS)
def test_ipv6_update_has_what_the_router_was_told(router: str, suffix: str) -> None:
    announced: set[nlri.Prefix] = set()
    for message in _updates(router, "update-ipv6", suffix):
        a = message.attributes
        _check_path_attributes(a, suffix)
        assert a.next_hop is None and message.nlri == () and a.mp_unreach is None
        reach = a.mp_reach
        assert reach is not None
        assert (reach.afi, reach.safi) == (nlri.Afi.IPV6, nlri.Safi.UNICAST)
        assert reach.next_hops == (NEXT_HOP6,)  # global only: the sessions run over IPv4
        announced |= set(reach.nlri)
    assert announced == {KEEP6, GONE6}


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("suffix", SESSIONS)
def test_withdraws(router: str, suffix: str) -> None:
    (v4,) = _updates(router, "withdraw-ipv4", suffix)
    assert v4 == update.Update(withdrawn=(GONE4,))
    (v6,) = _updates(router, "withdraw-ipv6", suffix)
    unreach = attrs.MpUnreach(nlri.Afi.IPV6, nlri.Safi.UNICAST, (GONE6,))
    assert v6 == update.Update(attributes=attrs.PathAttributes(mp_unreach=unreach))
    assert not v4.is_end_of_rib and not v6.is_end_of_rib


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("suffix", SESSIONS)
def test_end_of_rib(router: str, suffix: str) -> None:
    for afi, family in ((nlri.Afi.IPV4, "ipv4"), (nlri.Afi.IPV6, "ipv6")):
        (message,) = _updates(router, f"end-of-rib-{family}", suffix)
        assert message.is_end_of_rib
        assert message == update.end_of_rib(afi)


@pytest.mark.parametrize("router", ["frr", "bird"])
@pytest.mark.parametrize("suffix", SESSIONS)
def test_route_refresh(router: str, suffix: str) -> None:
    for afi, family in ((nlri.Afi.IPV4, "ipv4"), (nlri.Afi.IPV6, "ipv6")):
        assert decode(f"{router}-route-refresh-{family}{suffix}.hex") == simple.RouteRefresh(afi, nlri.Safi.UNICAST)


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("suffix", SESSIONS)
def test_keepalive_and_shutdown_notification(router: str, suffix: str) -> None:
    assert decode(f"{router}-keepalive{suffix}.hex") == simple.Keepalive()
    message = decode(f"{router}-notification-cease{suffix}.hex")
    # Cease / Administrative Shutdown with the RFC 9003 shutdown communication "maintenance".
    assert message == simple.Notification(6, 2, b"\x0bmaintenance")
    assert isinstance(message, simple.Notification)
    assert message.describe() == "CEASE/ADMINISTRATIVE_SHUTDOWN"
