from __future__ import annotations

import contextlib
import copy
import ipaddress
import pathlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalhorn.common import errors
from metalhorn.lb import config, fields

DATA = pathlib.Path(__file__).parent / "data" / "metallb"
CONFIG_EXAMPLES = sorted(p for p in DATA.glob("*.yaml") if not p.name.startswith("service-"))


@pytest.mark.parametrize("path", CONFIG_EXAMPLES, ids=lambda p: p.stem)
def test_documented_examples_are_accepted(path: pathlib.Path) -> None:
    cfg = config.parse_yaml(path.read_text())
    assert cfg.pools or cfg.bgp_peers or cfg.bfd_profiles


def test_l2_basic_example_values() -> None:
    cfg = config.parse_yaml((DATA / "l2-basic.yaml").read_text())
    (pool,) = cfg.pools
    assert pool.auto_assign is True and pool.avoid_buggy_ips is False
    assert [(str(r.first), str(r.last)) for r in pool.addresses] == [
        ("198.18.10.0", "198.18.10.255"),
        ("198.18.9.1", "198.18.9.5"),
        ("2001:db8:e799::", "2001:db8:e799::f"),
    ]
    assert cfg.l2_advertisements_for(pool) == cfg.l2_advertisements  # no pool list: every pool


def test_bgp_advanced_example_values() -> None:
    cfg = config.parse_yaml((DATA / "bgp-advanced.yaml").read_text())
    peers = {p.meta.name: p for p in cfg.bgp_peers}
    a, b, vrf = peers["peer-a"], peers["peer-b"], peers["peer-vrf"]
    assert (a.peer_port, a.hold_time, a.keepalive_time) == (180, 90.0, 30.0)
    assert b.hold_time == 90.0 and b.keepalive_time == 30.0  # keepalive derived as hold / 3
    assert b.peer_address == ipaddress.ip_address("2001:db8::3") and b.local_asn == 65410
    assert b.connect_time == 10.0 and str(b.router_id) == "198.19.0.2"
    assert "not-a-real-secret" not in repr(b)
    assert vrf.password_secret == config.SecretRef("bgp-password", "metallb-system") and vrf.peer_port == 179
    advs = {a.meta.name: a for a in cfg.bgp_advertisements}
    assert [str(c) for c in advs["local"].communities] == ["65535:65282", "large:64512:1:2"]
    assert advs["external"].aggregation_length == 24 and advs["external"].aggregation_length_v6 == 128
    assert str(cfg.pools[0].addresses[0].first) == "198.18.100.0"


def test_community_aliases_resolve_in_any_document_order() -> None:
    docs = config.load_yaml((DATA / "bgp-communities.yaml").read_text())
    cfg = config.parse(list(reversed(docs)))
    assert [str(c) for c in cfg.bgp_advertisements[0].communities] == ["1234:1", "65535:65282", "large:4200000000:1:2"]


def test_peer_defaults_keepalive_derives_hold() -> None:
    cfg = config.parse_yaml((DATA / "dual-stack.yaml").read_text())
    (peer,) = cfg.bgp_peers
    assert peer.dynamic_asn == "external" and peer.peer_asn == 0
    assert (peer.hold_time, peer.keepalive_time) == (30.0, 10.0)


def test_selectors_follow_kubernetes() -> None:
    sel = config.parse_yaml((DATA / "bgp-advanced.yaml").read_text()).bgp_peers[0].node_selectors
    assert not fields.any_selector_matches(sel, {"rack": "frontend", "network-speed": "slow"})
    assert fields.any_selector_matches(sel, {"rack": "frontend"})  # NotIn matches a missing key
    assert fields.any_selector_matches(sel, {"kubernetes.io/hostname": "hostb"})
    assert not fields.any_selector_matches(sel, {"kubernetes.io/hostname": "hostc"})
    exists = fields.Requirement("a", fields.Operator.EXISTS)
    missing = fields.Requirement("a", fields.Operator.DOES_NOT_EXIST)
    assert exists.matches({"a": ""}) and not missing.matches({"a": ""}) and missing.matches({})
    assert fields.LabelSelector().matches({"anything": "x"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1m30s", 90), ("0", 0), ("1h", 3600), ("500ms", 0.5), ("1.5s", 1.5), ("2m0.5s", 120.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "90", "s", "1x", "-3s", "1m 30s", "1.2.3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(text)


def test_empty_input_is_an_empty_config() -> None:
    assert config.parse_yaml("") == config.LbConfig()
    assert config.parse_yaml("---\n---\n") == config.LbConfig()


def test_yaml_syntax_error_is_invalid_config() -> None:
    with pytest.raises(config.InvalidConfig, match="line 2"):
        config.load_yaml("a: [1,\nb: }")


# --- invalid inputs: each rejected with the object and the field named --------------------------------------

POOL = {
    "apiVersion": "metallb.io/v1beta1",
    "kind": "IPAddressPool",
    "metadata": {"name": "pool1", "namespace": "metallb-system"},
    "spec": {"addresses": ["198.18.0.0/24"]},
}
POOL2 = {**POOL, "metadata": {"name": "pool2"}, "spec": {"addresses": ["198.18.1.0/24"]}}
PEER = {
    "apiVersion": "metallb.io/v1beta2",
    "kind": "BGPPeer",
    "metadata": {"name": "peer1"},
    "spec": {"myASN": 64512, "peerASN": 64513, "peerAddress": "198.19.0.1"},
}
BGPADV = {"apiVersion": "metallb.io/v1beta1", "kind": "BGPAdvertisement", "metadata": {"name": "adv"}, "spec": {}}
L2ADV = {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": {"name": "l2"}, "spec": {}}
COMMUNITY = {
    "apiVersion": "metallb.io/v1beta1",
    "kind": "Community",
    "metadata": {"name": "c"},
    "spec": {"communities": [{"name": "vpn", "value": "1234:1"}]},
}
BFD = {"apiVersion": "metallb.io/v1beta1", "kind": "BFDProfile", "metadata": {"name": "bfd1"}, "spec": {}}


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of doc with path ("spec.addresses") set to value (or removed when value is ...)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return out


POOL_REF = "IPAddressPool metallb-system/pool1"
PEER_REF = "BGPPeer metallb-system/peer1"
ADV_REF = "BGPAdvertisement metallb-system/adv"

INVALID: list[tuple[str, list[dict[str, Any]], str]] = [
    (
        "reversed-range",
        [with_(POOL, "spec.addresses", ["198.18.0.9-198.18.0.1"])],
        f"{POOL_REF}: spec.addresses[0]: 198.18.0.9-198.18.0.1 is reversed",
    ),
    (
        "reversed-range-second",
        [with_(POOL, "spec.addresses", ["198.18.1.0/24", "198.18.0.9-198.18.0.1"])],
        f"{POOL_REF}: spec.addresses[1]: 198.18.0.9-198.18.0.1 is reversed",
    ),
    ("bad-cidr", [with_(POOL, "spec.addresses", ["198.18.0.0/33"])], f"{POOL_REF}: spec.addresses[0]:"),
    ("bad-cidr-octet", [with_(POOL, "spec.addresses", ["198.18.0.256/24"])], f"{POOL_REF}: spec.addresses[0]:"),
    ("bare-ip", [with_(POOL, "spec.addresses", ["198.18.0.1"])], f"{POOL_REF}: spec.addresses[0]:"),
    (
        "mixed-family-range",
        [with_(POOL, "spec.addresses", ["198.18.0.1-2001:db8::1"])],
        f"{POOL_REF}: spec.addresses[0]: 198.18.0.1-2001:db8::1 mixes IPv4 and IPv6",
    ),
    ("bad-range-end", [with_(POOL, "spec.addresses", ["198.18.0.1-x"])], f"{POOL_REF}: spec.addresses[0]: 'x'"),
    ("no-addresses", [with_(POOL, "spec.addresses", [])], f"{POOL_REF}: spec.addresses: needs at least one"),
    ("missing-addresses", [with_(POOL, "spec.addresses", ...)], f"{POOL_REF}: spec.addresses: is required"),
    ("missing-spec", [with_(POOL, "spec", ...)], f"{POOL_REF}: spec: is required"),
    (
        "addresses-not-list",
        [with_(POOL, "spec.addresses", "198.18.0.0/24")],
        f"{POOL_REF}: spec.addresses: must be a list",
    ),
    (
        "overlap-pools",
        [POOL, with_(POOL2, "spec.addresses", ["198.18.0.128/25"])],
        "IPAddressPool metallb-system/pool2: spec.addresses[0]: 198.18.0.128/25 overlaps 198.18.0.0/24 of " + POOL_REF,
    ),
    (
        "overlap-same-pool",
        [with_(POOL, "spec.addresses", ["198.18.0.0/24", "198.18.0.5-198.18.0.6"])],
        f"{POOL_REF}: spec.addresses[1]: 198.18.0.5-198.18.0.6 overlaps 198.18.0.0/24",
    ),
    (
        "overlap-v6",
        [with_(POOL, "spec.addresses", ["2001:db8::/64"]), with_(POOL2, "spec.addresses", ["2001:db8::5/128"])],
        "IPAddressPool metallb-system/pool2: spec.addresses[0]: 2001:db8::5/128 overlaps 2001:db8::/64",
    ),
    ("unknown-spec-field", [with_(POOL, "spec.autoassign", True)], f"{POOL_REF}: spec.autoassign: unknown field"),
    ("unknown-top-field", [with_(POOL, "extra", 1)], f"{POOL_REF}: extra: unknown field"),
    ("unknown-metadata-field", [with_(POOL, "metadata.nme", "x")], f"{POOL_REF}: metadata.nme: unknown field"),
    (
        "unknown-alloc-field",
        [with_(POOL, "spec.serviceAllocation", {"priority": 1, "namespace": ["a"]})],
        f"{POOL_REF}: spec.serviceAllocation.namespace: unknown field",
    ),
    (
        "unknown-selector-field",
        [with_(L2ADV, "spec.nodeSelectors", [{"matchLabel": {"a": "b"}}])],
        "L2Advertisement metallb-system/l2: spec.nodeSelectors[0].matchLabel: unknown field",
    ),
    (
        "bad-operator",
        [with_(L2ADV, "spec.nodeSelectors", [{"matchExpressions": [{"key": "a", "operator": "Is"}]}])],
        "L2Advertisement metallb-system/l2: spec.nodeSelectors[0].matchExpressions[0].operator: 'Is' is not one of",
    ),
    (
        "in-without-values",
        [with_(L2ADV, "spec.nodeSelectors", [{"matchExpressions": [{"key": "a", "operator": "In"}]}])],
        "L2Advertisement metallb-system/l2: spec.nodeSelectors[0].matchExpressions[0].values: operator In needs",
    ),
    (
        "exists-with-values",
        [
            with_(
                L2ADV,
                "spec.nodeSelectors",
                [{"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}],
            )
        ],
        "L2Advertisement metallb-system/l2: spec.nodeSelectors[0].matchExpressions[0].values: operator Exists takes no",
    ),
    (
        "bad-label-value",
        [with_(L2ADV, "spec.nodeSelectors", [{"matchLabels": {"a": "b c"}}])],
        "L2Advertisement metallb-system/l2: spec.nodeSelectors[0].matchLabels.a: 'b c' is not a valid label value",
    ),
    (
        "wrong-api-version",
        [with_(POOL, "apiVersion", "metallb.io/v1beta2")],
        f"{POOL_REF}: apiVersion: 'metallb.io/v1beta2' is wrong for IPAddressPool: use metallb.io/v1beta1",
    ),
    ("peer-old-api", [with_(PEER, "apiVersion", "metallb.io/v1beta1")], f"{PEER_REF}: apiVersion:"),
    (
        "wrong-kind",
        [with_(POOL, "kind", "AddressPool")],
        "AddressPool metallb-system/pool1: kind: 'AddressPool' is not one of",
    ),
    ("missing-kind", [with_(POOL, "kind", ...)], "document #1: kind: is required"),
    ("not-a-mapping", [["a"]], "document #1: must be a mapping, not a list"),  # type: ignore[list-item]
    ("missing-name", [with_(POOL, "metadata.name", ...)], "IPAddressPool (document #1): metadata.name: is required"),
    ("bad-name", [with_(POOL, "metadata.name", "Pool_1")], "IPAddressPool metallb-system/Pool_1: metadata.name:"),
    (
        "duplicate-pool",
        [POOL, with_(POOL2, "metadata.name", "pool1")],
        f"{POOL_REF}: metadata.name: another IPAddressPool is also named 'pool1'",
    ),
    (
        "duplicate-peer",
        [PEER, with_(PEER, "spec.peerAddress", "198.19.0.2")],
        f"{PEER_REF}: metadata.name: another BGPPeer",
    ),
    (
        "auto-assign-not-bool",
        [with_(POOL, "spec.autoAssign", "yes please")],
        f"{POOL_REF}: spec.autoAssign: must be true or false",
    ),
    (
        "l2-unknown-pool",
        [POOL, with_(L2ADV, "spec.ipAddressPools", ["pool1", "ghost"])],
        "L2Advertisement metallb-system/l2: spec.ipAddressPools[1]: no IPAddressPool is named 'ghost'",
    ),
    (
        "bgp-unknown-pool",
        [with_(BGPADV, "spec.ipAddressPools", ["ghost"])],
        f"{ADV_REF}: spec.ipAddressPools[0]: no IPAddressPool is named 'ghost'",
    ),
    (
        "bgp-unknown-peer",
        [POOL, with_(BGPADV, "spec.peers", ["peer9"])],
        f"{ADV_REF}: spec.peers[0]: no BGPPeer is named 'peer9'",
    ),
    (
        "duplicate-pool-ref",
        [POOL, with_(L2ADV, "spec.ipAddressPools", ["pool1", "pool1"])],
        "L2Advertisement metallb-system/l2: spec.ipAddressPools[1]: 'pool1' is listed twice",
    ),
    (
        "peer-unknown-bfd",
        [with_(PEER, "spec.bfdProfile", "fast")],
        f"{PEER_REF}: spec.bfdProfile: no BFDProfile is named 'fast'",
    ),
    ("asn-zero", [with_(PEER, "spec.myASN", 0)], f"{PEER_REF}: spec.myASN: 0 is out of range 1..4294967295"),
    ("asn-too-big", [with_(PEER, "spec.peerASN", 4294967296)], f"{PEER_REF}: spec.peerASN: 4294967296 is out of range"),
    ("asn-string", [with_(PEER, "spec.peerASN", "64512")], f"{PEER_REF}: spec.peerASN: must be an integer"),
    ("asn-missing", [with_(PEER, "spec.peerASN", ...)], f"{PEER_REF}: spec.peerASN: is required (or set dynamicASN)"),
    (
        "asn-and-dynamic",
        [with_(PEER, "spec.dynamicASN", "external")],
        f"{PEER_REF}: spec.dynamicASN: cannot be set together",
    ),
    (
        "bad-dynamic",
        [with_(with_(PEER, "spec.peerASN", ...), "spec.dynamicASN", "both")],
        f"{PEER_REF}: spec.dynamicASN: 'both'",
    ),
    (
        "hold-too-short",
        [with_(PEER, "spec.holdTime", "2s")],
        f"{PEER_REF}: spec.holdTime: 2s is too short: must be 0 or at least 3s",
    ),
    (
        "keepalive-over-hold",
        [with_(with_(PEER, "spec.holdTime", "9s"), "spec.keepaliveTime", "10s")],
        f"{PEER_REF}: spec.keepaliveTime: 10s is longer than holdTime (9s)",
    ),
    (
        "keepalive-with-zero-hold",
        [with_(with_(PEER, "spec.holdTime", "0s"), "spec.keepaliveTime", "1s")],
        f"{PEER_REF}: spec.keepaliveTime: 1s is longer than holdTime (0s)",
    ),
    ("bad-duration", [with_(PEER, "spec.holdTime", "90")], f"{PEER_REF}: spec.holdTime: '90' is not a duration"),
    (
        "bad-peer-address",
        [with_(PEER, "spec.peerAddress", "198.19.0.300")],
        f"{PEER_REF}: spec.peerAddress: '198.19.0.300' is not an IP",
    ),
    (
        "no-peer-address",
        [with_(PEER, "spec.peerAddress", ...)],
        f"{PEER_REF}: spec.peerAddress: is required (or set interface)",
    ),
    (
        "address-and-interface",
        [with_(PEER, "spec.interface", "eth0")],
        f"{PEER_REF}: spec.interface: cannot be set together",
    ),
    (
        "router-id-v6",
        [with_(PEER, "spec.routerID", "2001:db8::1")],
        f"{PEER_REF}: spec.routerID: 2001:db8::1 is not an IPv4",
    ),
    ("port-zero", [with_(PEER, "spec.peerPort", 0)], f"{PEER_REF}: spec.peerPort: 0 is out of range 1..65535"),
    (
        "ibgp-multihop",
        [with_(with_(PEER, "spec.peerASN", 64512), "spec.ebgpMultiHop", True)],
        f"{PEER_REF}: spec.ebgpMultiHop: is for eBGP only",
    ),
    (
        "password-and-secret",
        [with_(with_(PEER, "spec.password", "x"), "spec.passwordSecret", {"name": "s"})],
        f"{PEER_REF}: spec.passwordSecret: cannot be set together with password",
    ),
    (
        "connect-time-fraction",
        [with_(PEER, "spec.connectTime", "1.5s")],
        f"{PEER_REF}: spec.connectTime: must be a whole number",
    ),
    (
        "bfd-multiplier",
        [with_(BFD, "spec.detectMultiplier", 1)],
        "BFDProfile metallb-system/bfd1: spec.detectMultiplier: 1 is out of range 2..255",
    ),
    (
        "bfd-interval",
        [with_(BFD, "spec.receiveInterval", 60001)],
        "BFDProfile metallb-system/bfd1: spec.receiveInterval: 60001 is out of range 10..60000",
    ),
    (
        "community-unknown-name",
        [POOL, with_(BGPADV, "spec.communities", ["vpn"])],
        f"{ADV_REF}: spec.communities[0]: 'vpn' is neither a community",
    ),
    (
        "community-too-big",
        [POOL, with_(BGPADV, "spec.communities", ["65536:1"])],
        f"{ADV_REF}: spec.communities[0]: '65536:1': '65536' is not a number in 0..65535",
    ),
    (
        "community-large-marker",
        [POOL, with_(BGPADV, "spec.communities", ["big:1:2:3"])],
        f"{ADV_REF}: spec.communities[0]: 'big:1:2:3': a large community is written large:",
    ),
    (
        "community-alias-bad-value",
        [with_(COMMUNITY, "spec.communities", [{"name": "x", "value": "1:2:3"}])],
        "Community metallb-system/c: spec.communities[0].value: '1:2:3' is not a community",
    ),
    (
        "community-alias-twice",
        [COMMUNITY, with_(COMMUNITY, "metadata.name", "d")],
        "Community metallb-system/d: spec.communities[0].name: community alias 'vpn' is defined twice",
    ),
    (
        "agg-out-of-range",
        [POOL, with_(BGPADV, "spec.aggregationLength", 33)],
        f"{ADV_REF}: spec.aggregationLength: 33 is out of range 1..32",
    ),
    (
        "agg-v6-out-of-range",
        [POOL, with_(BGPADV, "spec.aggregationLengthV6", 129)],
        f"{ADV_REF}: spec.aggregationLengthV6: 129 is out of range 1..128",
    ),
    (
        "agg-shorter-than-pool",
        [POOL, with_(BGPADV, "spec.aggregationLength", 16)],
        f"{ADV_REF}: spec.aggregationLength: /16 is shorter than /24 of 198.18.0.0/24 in {POOL_REF}",
    ),
    (
        "agg-shorter-than-range",
        [with_(POOL, "spec.addresses", ["198.18.0.1-198.18.0.5"]), with_(BGPADV, "spec.aggregationLength", 30)],
        f"{ADV_REF}: spec.aggregationLength: /30 is shorter than /31 of 198.18.0.1-198.18.0.5",
    ),
    (
        "agg-v6-shorter",
        [with_(POOL, "spec.addresses", ["2001:db8::/120"]), with_(BGPADV, "spec.aggregationLengthV6", 64)],
        f"{ADV_REF}: spec.aggregationLengthV6: /64 is shorter than /120 of 2001:db8::/120",
    ),
    (
        "agg-with-service-selectors",
        [
            POOL,
            with_(with_(BGPADV, "spec.aggregationLength", 24), "spec.serviceSelectors", [{"matchLabels": {"a": "b"}}]),
        ],
        f"{ADV_REF}: spec.serviceSelectors: cannot be combined with an aggregationLength",
    ),
    (
        "preferred-weight",
        [with_(L2ADV, "spec.preferredNodeSelectors", [{"weight": 101, "preference": {}}])],
        "L2Advertisement metallb-system/l2: spec.preferredNodeSelectors[0].weight: 101 is out of range 1..100",
    ),
    (
        "priority-negative",
        [with_(POOL, "spec.serviceAllocation", {"priority": -1})],
        f"{POOL_REF}: spec.serviceAllocation.priority: -1 is out of range",
    ),
]


@pytest.mark.parametrize(("docs", "expected"), [(d, e) for _, d, e in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_inputs_are_rejected(docs: list[dict[str, Any]], expected: str) -> None:
    with pytest.raises(config.InvalidConfig) as info:
        config.parse(docs)
    assert isinstance(info.value, errors.InvalidArgument)
    assert info.value.code == errors.ErrorCode.INVALID
    texts = [str(p) for p in info.value.problems]
    assert any(t.startswith(expected) for t in texts), texts


def test_every_problem_is_reported_at_once() -> None:
    docs = [with_(POOL, "spec.addresses", ["198.18.0.9-198.18.0.1", "nope"]), with_(PEER, "spec.myASN", 0)]
    with pytest.raises(config.InvalidConfig) as info:
        config.parse(docs)
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("3 problems:\n  - IPAddressPool metallb-system/pool1: spec.addresses[0]")


def test_valid_baseline_documents_pass() -> None:
    """The table above mutates these; unmutated they must be accepted, so each row fails for its own reason."""
    cfg = config.parse([POOL, POOL2, PEER, BGPADV, L2ADV, COMMUNITY, BFD])
    assert [p.name for p in cfg.pools] == ["pool1", "pool2"]
    assert cfg.bgp_advertisements[0].aggregation_length == 32


# --- fuzz: random trees never raise anything but InvalidConfig ------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "198.18.0.0/24",
            "198.18.0.9-198.18.0.1",
            "2001:db8::/64",
            "90s",
            "1m30s",
            "65535:65282",
            "large:1:2:3",
            "In",
            "NotIn",
            "Exists",
            "pool1",
            "metallb.io/v1beta1",
            "metallb.io/v1beta2",
        ]
    ),
)
keys = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "name",
        "namespace",
        "labels",
        "addresses",
        "autoAssign",
        "avoidBuggyIPs",
        "serviceAllocation",
        "priority",
        "namespaces",
        "namespaceSelectors",
        "serviceSelectors",
        "matchLabels",
        "matchExpressions",
        "key",
        "operator",
        "values",
        "ipAddressPools",
        "ipAddressPoolSelectors",
        "nodeSelectors",
        "interfaces",
        "aggregationLength",
        "communities",
        "peers",
        "value",
        "myASN",
        "peerASN",
        "peerAddress",
        "holdTime",
        "keepaliveTime",
        "bfdProfile",
        "passwordSecret",
        "preferredNodeSelectors",
        "weight",
        "preference",
        "x",
    ]
) | st.text(max_size=5)
trees = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5), max_leaves=15
)
kinds = st.sampled_from(list(config.KINDS))


@st.composite
def documents(draw: st.DrawFn) -> object:
    """Mostly well-shaped documents with random specs, so the fuzz reaches deep into each kind's parser."""
    if draw(st.integers(0, 9)) == 0:
        return draw(trees)
    kind = draw(kinds)
    doc: dict[str, object] = {
        "apiVersion": config.KINDS[kind],
        "kind": kind,
        "metadata": {"name": draw(st.sampled_from(["a", "b", "pool1"]))},
    }
    doc["spec"] = draw(trees)
    return doc


@settings(max_examples=120, deadline=None)
@given(st.lists(documents(), max_size=5))
def test_fuzz_parser_raises_only_invalid_config(docs: list[object]) -> None:
    try:
        cfg = config.parse(docs)
    except config.InvalidConfig as exc:
        assert exc.problems
        assert all(isinstance(p, fields.Problem) and p.obj for p in exc.problems)
    else:
        assert isinstance(cfg, config.LbConfig)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_yaml_loader(text: str) -> None:
    with contextlib.suppress(config.InvalidConfig):
        config.parse_yaml(text)


def test_yaml_keeps_community_like_values_as_strings() -> None:
    (doc,) = config.load_yaml("a: 1234:1\nb: 12\nc: 1.5\n")
    assert doc == {"a": "1234:1", "b": 12, "c": 1.5}
