from __future__ import annotations

import copy
import ipaddress
import pathlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalhorn.lb import config, fields, model

DATA = pathlib.Path(__file__).parent / "data" / "metallb"

SVC: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]},
}


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
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


def ip(text: str) -> config.IPAddress:
    return ipaddress.ip_address(text)


def test_minimal_service() -> None:
    s = model.parse_service(SVC)
    assert (s.key, s.labels, s.sharing_key, s.address_pool) == ("shop/web", (("app", "web"),), "", "")
    assert s.ports == (model.ServicePort(80, "TCP"), model.ServicePort(53, "UDP"))
    assert s.port_keys == frozenset({(80, "TCP"), (53, "UDP")})
    assert (s.ip_family_policy, s.ip_families, s.requested_ips) == (model.IPFamilyPolicy.SINGLE_STACK, (4,), ())


def test_default_namespace() -> None:
    assert model.parse_service(with_(SVC, "metadata", {"name": "x"})).key == "default/x"


def test_documented_dual_stack_service_with_endpoints() -> None:
    (doc,) = config.load_yaml((DATA / "service-dual-stack.yaml").read_text())
    s = model.parse_service(doc)
    assert s.ip_family_policy is model.IPFamilyPolicy.PREFER_DUAL_STACK
    assert s.ip_families == (6, 4) and s.address_pool == "dualstack-pool"
    assert s.ports == (model.ServicePort(80, "TCP", "", 8080),)
    assert [str(e) for e in s.endpoints] == ["198.18.50.10:8080", "[2001:db8:50::10]:8080", "198.18.50.11:8080"]


def test_annotations() -> None:
    notes = {
        "metallb.io/loadBalancerIPs": "198.18.0.5, 2001:db8::5",
        "metallb.io/address-pool": "p",
        "metallb.io/allow-shared-ip": "key1",
    }
    doc = with_(with_(SVC, "metadata.annotations", notes), "spec.ipFamilyPolicy", "RequireDualStack")
    s = model.parse_service(doc)
    assert s.requested_ips == (ip("198.18.0.5"), ip("2001:db8::5"))
    assert (s.address_pool, s.sharing_key, s.ip_families) == ("p", "key1", (4, 6))


@pytest.mark.parametrize(
    ("policy", "families", "lb_ip", "expected"),
    [
        (None, None, None, (4,)),
        (None, None, "2001:db8::7", (6,)),
        (None, ["IPv6"], None, (6,)),
        ("PreferDualStack", None, None, (4, 6)),
        ("PreferDualStack", ["IPv6"], None, (6, 4)),
        ("RequireDualStack", ["IPv6", "IPv4"], None, (6, 4)),
        ("PreferDualStack", None, "2001:db8::7", (6, 4)),
    ],
)
def test_family_resolution(
    policy: str | None, families: list[str] | None, lb_ip: str | None, expected: tuple[int, ...]
) -> None:
    doc = SVC
    if policy:
        doc = with_(doc, "spec.ipFamilyPolicy", policy)
    if families:
        doc = with_(doc, "spec.ipFamilies", families)
    if lb_ip:
        doc = with_(doc, "spec.loadBalancerIP", lb_ip)
    assert model.parse_service(doc).ip_families == expected


REF = "Service shop/web"
INVALID: list[tuple[str, Any, str]] = [
    ("wrong-type", with_(SVC, "spec.type", "ClusterIP"), f"{REF}: spec.type: 'ClusterIP': metalhorn serves only"),
    ("no-type", with_(SVC, "spec.type", ...), f"{REF}: spec.type: is required"),
    ("wrong-api", with_(SVC, "apiVersion", "v2"), f"{REF}: apiVersion: 'v2' is wrong for Service"),
    ("wrong-kind", with_(SVC, "kind", "Pod"), f"{REF}: kind: 'Pod' is not Service"),
    ("no-name", with_(SVC, "metadata.name", ...), "Service: metadata.name: is required"),
    (
        "unknown-spec-field",
        with_(SVC, "spec.loadBalancerIp", "198.18.0.1"),
        f"{REF}: spec.loadBalancerIp: unknown field",
    ),
    ("bad-port", with_(SVC, "spec.ports", [{"port": 70000}]), f"{REF}: spec.ports[0].port: 70000 is out of range"),
    (
        "bad-protocol",
        with_(SVC, "spec.ports", [{"port": 80, "protocol": "ICMP"}]),
        f"{REF}: spec.ports[0].protocol: 'ICMP'",
    ),
    (
        "port-twice",
        with_(SVC, "spec.ports", [{"port": 80}, {"port": 80, "name": "b"}]),
        f"{REF}: spec.ports[1].port: 80/TCP is listed twice",
    ),
    (
        "bad-lb-ip",
        with_(SVC, "spec.loadBalancerIP", "198.18.0.300"),
        f"{REF}: spec.loadBalancerIP: '198.18.0.300' is not an IP",
    ),
    (
        "both-requests",
        with_(
            with_(SVC, "spec.loadBalancerIP", "198.18.0.1"),
            "metadata.annotations",
            {"metallb.io/loadBalancerIPs": "198.18.0.2"},
        ),
        f"{REF}: spec.loadBalancerIP: cannot be set together with the metallb.io/loadBalancerIPs annotation",
    ),
    (
        "two-v4",
        with_(SVC, "metadata.annotations", {"metallb.io/loadBalancerIPs": "198.18.0.1,198.18.0.2"}),
        f"{REF}: metadata.annotations[metallb.io/loadBalancerIPs]: at most one IPv4 and one IPv6",
    ),
    (
        "single-stack-two-ips",
        with_(SVC, "metadata.annotations", {"metallb.io/loadBalancerIPs": "198.18.0.1,2001:db8::1"}),
        f"{REF}: spec.loadBalancerIP: SingleStack takes one requested IP",
    ),
    (
        "family-mismatch",
        with_(with_(SVC, "spec.ipFamilies", ["IPv6"]), "spec.loadBalancerIP", "198.18.0.1"),
        f"{REF}: spec.ipFamilies: requested IP 198.18.0.1 is IPv4, but the service is IPv6",
    ),
    (
        "require-dual-one-ip",
        with_(with_(SVC, "spec.ipFamilyPolicy", "RequireDualStack"), "spec.loadBalancerIP", "198.18.0.1"),
        f"{REF}: spec.loadBalancerIP: RequireDualStack needs one IPv4 and one IPv6",
    ),
    ("bad-policy", with_(SVC, "spec.ipFamilyPolicy", "DualStack"), f"{REF}: spec.ipFamilyPolicy: 'DualStack' is not"),
    ("bad-family", with_(SVC, "spec.ipFamilies", ["IPv5"]), f"{REF}: spec.ipFamilies[0]: 'IPv5' is not IPv4 or IPv6"),
    (
        "single-two-families",
        with_(SVC, "spec.ipFamilies", ["IPv4", "IPv6"]),
        f"{REF}: spec.ipFamilies: SingleStack takes one",
    ),
    ("bad-endpoint", with_(SVC, "endpoints", ["198.18.0.1"]), f"{REF}: endpoints[0]: '198.18.0.1' is not IP:PORT"),
    ("bad-endpoint-ip", with_(SVC, "endpoints", [{"ip": "x", "port": 1}]), f"{REF}: endpoints[0].ip: 'x' is not an IP"),
    (
        "bad-label",
        with_(SVC, "metadata.labels", {"app": "a b"}),
        f"{REF}: metadata.labels.app: 'a b' is not a valid label",
    ),
    ("not-a-mapping", "Service", "Service: must be a mapping, not a string"),
]


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_services(doc: Any, expected: str) -> None:
    with pytest.raises(fields.InvalidConfig) as info:
        model.parse_service(doc)
    texts = [str(p) for p in info.value.problems]
    assert any(t.startswith(expected) for t in texts), texts


service_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.text(max_size=10)
    | st.sampled_from(["LoadBalancer", "198.18.0.1", "2001:db8::1", "PreferDualStack", "IPv6", "UDP", "1.2.3.4:80"]),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "ports",
                    "port",
                    "protocol",
                    "loadBalancerIP",
                    "ipFamilies",
                    "ipFamilyPolicy",
                    "annotations",
                    "labels",
                    "ip",
                    "targetPort",
                    "x",
                ]
            ),
            kids,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(service_trees, service_trees, service_trees)
def test_fuzz_service_parser_raises_only_invalid_config(spec: object, meta_extra: object, endpoints: object) -> None:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "annotations": meta_extra}, "spec": spec}
    if endpoints is not None:
        doc["endpoints"] = endpoints
    try:
        s = model.parse_service(doc)
    except fields.InvalidConfig as exc:
        assert exc.problems
    else:
        assert s.key == "default/s"
