"""The service controller against a MemoryStore: IPs in statuses, pending reasons, events on pool changes,
release on delete, and a restart (a new controller on the same store) that keeps every IP."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from metalhorn.control import reconcile
from metalhorn.control.controllers import lbrecords, services
from metalhorn.control.store import record as record_mod
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit


def pool(name: str, *addresses: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": name, "namespace": "metallb-system"},
        "spec": {"addresses": list(addresses), **spec},
    }


def service(name: str, *, namespace: str = "default", annotations: dict[str, str] | None = None, **spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], **spec},
    }


class Env:
    def __init__(self) -> None:
        self.clock = fake_clock.FakeClock()
        self.store = store_kit.MemoryStore(clock=self.clock)
        self.controller = services.ServiceController(store=self.store, clock=self.clock)

    def configure(self, *docs: dict[str, Any]) -> None:
        lbrecords.save_config(self.store, lbrecords.load_config_record(self.store), list(docs))

    def add(self, doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        name = lbrecords.service_record_name(meta.get("namespace", "default"), meta["name"])
        self.clock.advance(1.0)  # created_at orders the waiting services
        self.store.create(record_mod.Record(kind="service", name=name, spec={"document": doc}))

    def run(self) -> reconcile.Result:
        return self.controller.reconcile(services.KEY)

    def status(self, name: str) -> dict[str, Any]:
        return self.store.get("service", name).status

    def ips(self) -> dict[str, list[str]]:
        return {rec.name: rec.status.get("ingress", []) for rec in self.store.list("service")}

    def restart(self) -> None:
        self.controller = services.ServiceController(store=self.store, clock=self.clock)


@pytest.fixture
def env() -> Env:
    return Env()


def test_services_get_ips_and_a_full_pool_says_why(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.1-198.18.0.2"))
    for name in ("a", "b", "c"):
        env.add(service(name))
    assert isinstance(env.run(), reconcile.Success)
    assert env.ips() == {"default/a": ["198.18.0.1"], "default/b": ["198.18.0.2"], "default/c": []}
    a = env.status("default/a")
    assert a["state"] == "assigned" and a["pool"] == "blue" and a["reason"] == ""
    assert [e["message"] for e in a["events"]] == ["assigned 198.18.0.1 from pool blue"]
    c = env.status("default/c")
    assert c["state"] == "pending" and c["code"] == "no-free-ip"
    assert c["reason"] == "no free IP in pool blue"
    assert [e["message"] for e in c["events"]] == ["pending: no free IP in pool blue"]


def test_requested_ip_taken_names_the_holder(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.0/24"))
    env.add(service("first", namespace="web", loadBalancerIP="198.18.0.5"))
    env.add(service("second", loadBalancerIP="198.18.0.5"))
    env.run()
    assert env.status("web/first")["ingress"] == ["198.18.0.5"]
    second = env.status("default/second")
    assert second["reason"] == "requested IP 198.18.0.5 is taken by web/first"
    assert second["code"] == "ip-taken"


def test_delete_releases_the_ip_for_a_pending_service(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.1/32"))
    env.add(service("a"))
    env.add(service("b"))
    env.run()
    assert env.ips() == {"default/a": ["198.18.0.1"], "default/b": []}
    env.store.delete("service", "default/a")
    env.run()
    assert env.ips() == {"default/b": ["198.18.0.1"]}
    assert env.controller.allocator.users(ipaddress.ip_address("198.18.0.1")) == ("default/b",)


def test_restart_keeps_every_ip_even_where_a_fresh_start_would_differ(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.0/30"), pool("green", "2001:db8::/126"))
    for name in ("a", "b", "c"):
        env.add(service(name))
    env.add(service("shared-1", annotations={"metallb.io/allow-shared-ip": "k"}))
    env.add(service("shared-2", annotations={"metallb.io/allow-shared-ip": "k"}, ports=[{"port": 443}]))
    env.add(service("six", ipFamilies=["IPv6"]))
    env.run()
    env.store.delete("service", "default/a")  # a fresh allocator would now give b the lowest address
    env.run()
    before = env.ips()
    assert before["default/shared-1"] == before["default/shared-2"] != []
    for _ in range(2):
        env.restart()
        env.run()
        assert env.ips() == before
    events = [e["message"] for e in env.status("default/b")["events"]]
    assert not any("moved" in m for m in events)


def test_pool_edit_moves_services_whose_ip_left_with_an_event(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.1-198.18.0.3"))
    for name in ("a", "b", "c"):
        env.add(service(name))
    env.run()
    env.configure(pool("blue", "198.18.0.1-198.18.0.2", "198.18.0.10/31"))
    env.run()
    assert env.ips() == {"default/a": ["198.18.0.1"], "default/b": ["198.18.0.2"], "default/c": ["198.18.0.10"]}
    messages = [e["message"] for e in env.status("default/c")["events"]]
    assert messages[-1] == "moved from 198.18.0.3 to 198.18.0.10: 198.18.0.3 left pool blue"
    assert [e["message"] for e in env.status("default/a")["events"]] == ["assigned 198.18.0.1 from pool blue"]


def test_removed_pool_leaves_services_pending_and_says_why(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.1/32"), pool("green", "198.18.1.0/32", autoAssign=False))
    env.add(service("a"))
    env.run()
    env.configure(pool("green", "198.18.1.0/32", autoAssign=False))
    env.run()
    status = env.status("default/a")
    assert status["state"] == "pending" and status["ingress"] == []
    assert status["events"][-1]["message"] == (
        "lost 198.18.0.1: pool blue was removed; pending: no pool with autoAssign serves default/a"
    )


def test_pool_rename_keeps_ips_and_records_it(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.0/24"))
    env.add(service("a"))
    env.run()
    env.configure(pool("azure", "198.18.0.0/24"))
    env.run()
    status = env.status("default/a")
    assert status["ingress"] == ["198.18.0.0"] and status["pool"] == "azure"
    assert status["events"][-1]["message"] == "pool changed from blue to azure; 198.18.0.0 kept"


def test_spec_change_reassigns_and_keeps_foreign_status_keys(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.0/24"))
    env.add(service("a"))
    env.run()
    rec = env.store.get("service", "default/a")
    status = {**rec.status, "announced_by": "someone"}
    doc = service("a", loadBalancerIP="198.18.0.7")
    env.store.update(rec.with_(spec={"document": doc}, status=status))
    env.run()
    status = env.status("default/a")
    assert status["ingress"] == ["198.18.0.7"] and status["announced_by"] == "someone"
    assert status["events"][-1]["message"] == "moved from 198.18.0.0 to 198.18.0.7: the service changed"


def test_a_stored_config_that_does_not_validate_assigns_nothing(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.0/24"))
    env.add(service("a"))
    env.run()
    before = env.ips()
    rec = lbrecords.load_config_record(env.store)
    assert rec is not None
    env.store.update(rec.with_(spec={"documents": [pool("blue", "not-a-cidr")]}))
    env.restart()
    result = env.run()
    assert isinstance(result, reconcile.Fatal) and "spec.addresses[0]" in result.reason
    assert env.ips() == before


def test_idle_passes_write_nothing(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.0/24"))
    for name in ("a", "b"):
        env.add(service(name))
    env.add(service("p", annotations={"metallb.io/address-pool": "nope"}))
    env.run()
    versions = {rec.name: rec.resource_version for rec in env.store.list("service")}
    for _ in range(3):
        env.run()
    assert {rec.name: rec.resource_version for rec in env.store.list("service")} == versions
    assert env.status("default/p")["reason"] == "pool nope does not exist"


def test_requested_ips_are_served_before_dynamic_ones_in_one_pass(env: Env) -> None:
    env.configure(pool("blue", "198.18.0.1-198.18.0.2"))
    env.add(service("dynamic"))
    env.add(service("pinned", loadBalancerIP="198.18.0.1"))
    env.run()
    assert env.ips() == {"default/dynamic": ["198.18.0.2"], "default/pinned": ["198.18.0.1"]}
