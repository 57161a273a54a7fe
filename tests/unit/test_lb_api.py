"""The load-balancer routes through FastAPI's TestClient, with the service controller run after every write as
the manager would: documented MetalLB examples apply, invalid input is refused naming the object and field and
changes nothing, services get IPs, delete releases them, announcement reports show in service statuses."""

from __future__ import annotations

import copy
import pathlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from metalhorn.control.api import app as app_mod
from metalhorn.control.api import context as context_mod
from metalhorn.control.controllers import services
from metalhorn.lb import config
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

TOKEN = "lb-token"
DATA = pathlib.Path(__file__).parent / "data" / "metallb"
CONFIG_EXAMPLES = sorted(p for p in DATA.glob("*.yaml") if not p.name.startswith("service-"))


class Env:
    def __init__(self) -> None:
        self.clock = fake_clock.FakeClock()
        self.store = store_kit.MemoryStore(clock=self.clock)
        self.controller = services.ServiceController(store=self.store, clock=self.clock)
        self.changes: list[str] = []
        context = context_mod.Context(store=self.store, clock=self.clock, token=TOKEN, on_change=self._changed)
        self.client = TestClient(app_mod.create_app(context), headers={"Authorization": f"Bearer {TOKEN}"})

    def _changed(self, kind: str) -> None:
        self.changes.append(kind)
        if kind in services.WAKE_KINDS:
            self.controller.reconcile(services.KEY)

    def apply(self, *docs: Any, path: str = "/v1/lb/apply", **extra: Any) -> Any:
        self.clock.advance(1.0)
        return self.client.post(path, json={"documents": list(docs), **extra})

    def delete(self, *docs: Any) -> Any:
        return self.apply(*docs, path="/v1/lb/delete")

    def state(self) -> Any:
        """Everything a user can read back, to prove a refused request changed nothing."""
        return (
            self.client.get("/v1/lb/config").json(),
            self.client.get("/v1/lb/services").json(),
            self.client.get("/v1/lb/pools").json(),
        )

    def service(self, namespace: str, name: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/lb/services/{namespace}/{name}")
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()["status"]
        return status


@pytest.fixture
def env() -> Iterator[Env]:
    environment = Env()
    with environment.client:
        yield environment


def pool(name: str, *addresses: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": "metallb-system"},
        "spec": {"addresses": list(addresses), **spec},
    }


def l2(name: str, *pools: str) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "L2Advertisement",
        "metadata": {"name": name, "namespace": "metallb-system"},
        "spec": {"ipAddressPools": list(pools)},
    }


def peer(name: str, my_asn: Any = 64500, peer_asn: Any = 64501) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta2",
        "kind": "BGPPeer",
        "metadata": {"name": name, "namespace": "metallb-system"},
        "spec": {"myASN": my_asn, "peerASN": peer_asn, "peerAddress": "198.18.255.1"},
    }


def service(name: str, *, namespace: str = "default", annotations: dict[str, str] | None = None, **spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], **spec},
        "endpoints": ["198.18.200.10:8080"],
    }


# -- valid configurations --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIG_EXAMPLES, ids=lambda p: p.stem)
def test_every_documented_example_applies(env: Env, path: pathlib.Path) -> None:
    docs = config.load_yaml(path.read_text())
    response = env.apply(*docs)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["action"] for r in results] == ["created"] * len(docs)
    assert env.client.get("/v1/lb/config").json()["documents"] == docs
    again = env.apply(*docs).json()["results"]
    assert [r["action"] for r in again] == ["unchanged"] * len(docs)


def test_the_documented_dual_stack_service_gets_both_families(env: Env) -> None:
    docs = config.load_yaml((DATA / "dual-stack.yaml").read_text())
    docs += config.load_yaml((DATA / "service-dual-stack.yaml").read_text())
    assert env.apply(*docs).status_code == 200
    status = env.service("default", "my-app")
    assert status["state"] == "assigned" and status["pool"] == "dualstack-pool"
    assert status["ingress"] == ["2001:db8:41::10", "198.18.41.0"]


def test_services_get_ips_and_pools_count_them(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.0/30", "2001:db8::/126", avoidBuggyIPs=True), l2("all"))
    response = env.apply(
        service("web"),
        service("api", namespace="prod", loadBalancerIP="198.18.0.2"),  # requested IPs go first
        service("six", ipFamilies=["IPv6"]),
    )
    assert response.status_code == 200, response.text
    env.apply(service("third"))  # .0 is avoided as buggy; .3 is fine
    env.apply(service("none"))
    assert env.service("default", "web")["ingress"] == ["198.18.0.1"]
    assert env.service("prod", "api")["ingress"] == ["198.18.0.2"]
    assert env.service("default", "six")["ingress"] == ["2001:db8::"]
    pending = env.service("default", "none")
    assert pending["state"] == "pending" and pending["reason"] == "no free IP in pool blue"
    (row,) = env.client.get("/v1/lb/pools").json()["items"]
    assert env.service("default", "third")["ingress"] == ["198.18.0.3"]
    assert (row["assigned_v4"], row["total_v4"], row["assigned_v6"], row["total_v6"]) == (3, 3, 1, 4)
    assert (row["assigned"], row["total"]) == (4, 7)


def test_requested_ip_taken_is_the_pending_reason(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.0/24"))
    env.apply(service("first", namespace="shop", loadBalancerIP="198.18.0.5"))
    env.apply(service("second", loadBalancerIP="198.18.0.5"))
    assert env.service("default", "second")["reason"] == "requested IP 198.18.0.5 is taken by shop/first"


def test_reapply_reports_configured_and_unchanged(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.0/24"), service("web"))
    results = env.apply(pool("blue", "198.18.0.0/23"), service("web")).json()["results"]
    assert [(r["kind"], r["name"], r["action"]) for r in results] == [
        ("IPAddressPool", "blue", "configured"),
        ("Service", "web", "unchanged"),
    ]


def test_dry_run_validates_and_changes_nothing(env: Env) -> None:
    before = env.state()
    response = env.apply(pool("blue", "198.18.0.0/24"), service("web"), dry_run=True)
    assert response.status_code == 200 and response.json()["dry_run"] is True
    assert env.state() == before


# -- invalid input: named object and field, nothing changes ---------------------------------------------------------
def _bad_cidr() -> list[Any]:
    return [pool("red", "198.18.1.0/33")]


INVALID: list[tuple[str, list[Any], str, str]] = [
    ("overlap", [pool("red", "198.18.0.128/25")], "IPAddressPool metallb-system/red", "spec.addresses[0]"),
    ("bad-cidr", _bad_cidr(), "IPAddressPool metallb-system/red", "spec.addresses[0]"),
    ("reversed", [pool("red", "198.18.1.9-198.18.1.1")], "IPAddressPool metallb-system/red", "spec.addresses[0]"),
    ("unknown-pool", [l2("adv", "nope")], "L2Advertisement metallb-system/adv", "spec.ipAddressPools[0]"),
    ("asn-0", [peer("p", my_asn=0)], "BGPPeer metallb-system/p", "spec.myASN"),
    ("asn-too-big", [peer("p", peer_asn=4294967296)], "BGPPeer metallb-system/p", "spec.peerASN"),
    (
        "unknown-field",
        [{**pool("red", "198.18.1.0/24"), "spec": {"addresses": ["198.18.1.0/24"], "autoassign": True}}],
        "IPAddressPool metallb-system/red",
        "spec.autoassign",
    ),
    (
        "wrong-api-version",
        [{**pool("red", "198.18.1.0/24"), "apiVersion": "metallb.io/v1beta2"}],
        "IPAddressPool metallb-system/red",
        "apiVersion",
    ),
    ("unknown-kind", [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}], "ConfigMap", "kind"),
    ("service-type", [service("web", type="ClusterIP")], "Service default/web", "spec.type"),
    (
        "service-bad-ip",
        [service("web", annotations={"metallb.io/loadBalancerIPs": "198.18.0.300"})],
        "Service default/web",
        "metadata.annotations[metallb.io/loadBalancerIPs]",
    ),
]


@pytest.mark.parametrize(("docs", "obj", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_input_names_object_and_field_and_changes_nothing(
    env: Env, docs: list[Any], obj: str, field: str
) -> None:
    assert env.apply(pool("blue", "198.18.0.0/24"), l2("blue-adv", "blue"), service("keep")).status_code == 200
    before = env.state()
    # A valid pool and service ride along: they must not be stored either.
    response = env.apply(pool("green", "198.18.9.0/24"), service("also"), *docs)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "INVALID"
    assert any(e["object"].startswith(obj) and e["field"] == field for e in body["errors"]), body["errors"]
    assert obj in body["detail"] and field in body["detail"]
    assert env.state() == before


def test_every_problem_is_reported_at_once(env: Env) -> None:
    response = env.apply(pool("a", "198.18.0.0/33"), peer("p", my_asn=0), service("web", type="NodePort"))
    fields_named = {(e["object"], e["field"]) for e in response.json()["errors"]}
    assert {
        ("IPAddressPool metallb-system/a", "spec.addresses[0]"),
        ("BGPPeer metallb-system/p", "spec.myASN"),
        ("Service default/web", "spec.type"),
    } <= fields_named


def test_malformed_body_is_422_naming_the_field(env: Env) -> None:
    response = env.client.post("/v1/lb/apply", json={"docs": []})
    assert response.status_code == 422 and response.json()["field"] in ("docs", "documents")


# -- delete -----------------------------------------------------------------------------------------------------------
def test_delete_releases_the_ip_to_a_pending_service(env: Env) -> None:
    env.apply(pool("tiny", "198.18.0.7/32"))
    env.apply(service("a"))
    env.apply(service("b"))
    assert env.service("default", "b")["state"] == "pending"
    response = env.delete(service("a"))
    assert response.json()["results"] == [{"kind": "Service", "namespace": "default", "name": "a", "action": "deleted"}]
    assert env.client.get("/v1/lb/services/default/a").status_code == 404
    assert env.service("default", "b")["ingress"] == ["198.18.0.7"]


def test_delete_of_a_pool_still_named_by_an_advertisement_is_refused(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.0/24"), l2("adv", "blue"))
    before = env.state()
    response = env.delete(pool("blue"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["object"] == "L2Advertisement metallb-system/adv"
    assert env.state() == before
    response = env.delete(l2("adv"), pool("blue"), service("ghost"))
    assert [r["action"] for r in response.json()["results"]] == ["deleted", "deleted", "not found"]
    assert env.client.get("/v1/lb/config").json()["documents"] == []


def test_delete_route_for_one_service(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.0/24"), service("web", namespace="shop"))
    assert env.client.delete("/v1/lb/services/shop/web").status_code == 200
    assert env.client.delete("/v1/lb/services/shop/web").status_code == 404
    assert env.client.get("/v1/lb/pools").json()["items"][0]["assigned"] == 0


# -- pool changes and announcements -----------------------------------------------------------------------------------
def test_pool_edit_moves_a_service_with_an_event(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.1-198.18.0.2"), service("a"), service("b"))
    env.apply(pool("blue", "198.18.0.1/32", "198.18.0.20/32"))
    status = env.service("default", "b")
    assert status["ingress"] == ["198.18.0.20"]
    assert status["events"][-1]["message"] == "moved from 198.18.0.2 to 198.18.0.20: 198.18.0.2 left pool blue"


def test_announcement_reports_show_in_service_status_while_fresh(env: Env) -> None:
    env.apply(pool("blue", "198.18.0.0/24"), service("web"))
    body = {"l2": ["default/web"], "bgp": {}}
    assert env.client.put("/v1/lb/announcements/node-1", json=body).status_code == 200
    body = {"bgp": {"default/web": ["tor-b", "tor-a"]}}
    assert env.client.put("/v1/lb/announcements/node-2", json=body).status_code == 200
    assert env.service("default", "web")["announced_by"] == [
        {"node": "node-1", "mode": "l2", "peers": []},
        {"node": "node-2", "mode": "bgp", "peers": ["tor-a", "tor-b"]},
    ]
    listed = env.client.get("/v1/lb/services").json()["items"][0]["status"]["announced_by"]
    assert len(listed) == 2
    env.clock.advance(11.0)  # node_down_after (10 s) without a report: stale, not shown
    assert env.service("default", "web")["announced_by"] == []
    bad = env.client.put("/v1/lb/announcements/Node_1", json={"l2": []})
    assert bad.status_code == 422


def test_routes_need_the_token(env: Env) -> None:
    env.client.headers.pop("Authorization")
    for method, path in [("POST", "/v1/lb/apply"), ("GET", "/v1/lb/pools"), ("GET", "/v1/lb/services")]:
        assert env.client.request(method, path, json={"documents": []}).status_code == 401


def test_documents_in_the_request_are_not_mutated_by_validation(env: Env) -> None:
    docs = [pool("blue", "198.18.0.0/24"), service("web")]
    sent = copy.deepcopy(docs)
    env.apply(*docs)
    assert env.client.get("/v1/lb/config").json()["documents"] == [sent[0]]
    stored = env.client.get("/v1/lb/services/default/web").json()["spec"]["document"]
    assert stored == sent[1]
