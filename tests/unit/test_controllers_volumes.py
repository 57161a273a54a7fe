"""Volume and node controllers against the MemoryStore with a fake clock and fake agents: scheduling,
attach/detach, degraded after a node goes down, replenishment after the wait, deletion."""

from __future__ import annotations

import pytest
from tests.unit.controller_cluster import Cluster, GiB

from metalhorn.control import reconcile
from metalhorn.control.store import record as record_mod


def healthy_attached(cluster: Cluster) -> None:
    cluster.create_volume("v1")
    cluster.step(2)
    cluster.set_spec("v1", attach_node="n1")
    cluster.step(3)
    vol = cluster.volume()
    assert (vol.status["state"], vol.status["robustness"]) == ("attached", "healthy"), vol.status


def test_new_volume_gets_one_replica_per_node_and_becomes_healthy() -> None:
    cluster = Cluster()
    cluster.step()  # agents register their nodes
    cluster.create_volume("v1")
    cluster.step()
    replicas = cluster.replicas()
    assert sorted(r.spec["node"] for r in replicas) == ["n1", "n2", "n3"]
    for rep in replicas:
        assert rep.spec["size"] == GiB
        assert rep.spec["data_dir"] == f"/data/{rep.spec['node']}/replicas/{rep.name}"
        assert rep.owner_id == rep.spec["node"]
    cluster.step(2)  # the agents learn of the replicas at their next sync and report them running at the one after
    vol = cluster.volume()
    assert vol.status["state"] == "detached"
    assert vol.status["robustness"] == "healthy"
    assert vol.status["reasons"] == []
    assert {r["node"] for r in vol.status["replicas"]} == {"n1", "n2", "n3"}


def test_attach_creates_the_engine_on_the_attach_node_and_reports_the_endpoint() -> None:
    cluster = Cluster()
    cluster.step()
    healthy_attached(cluster)
    engine = cluster.store.get("engine", "v1")
    assert engine.spec["node"] == "n1"
    assert engine.owner_id == "n1"
    assert sorted(engine.spec["replicas"]) == sorted(r.name for r in cluster.replicas())
    vol = cluster.volume()
    assert vol.status["endpoint"] == "nbd://198.18.0.1:10809/v1"
    assert all(r["mode"] == "RW" for r in vol.status["replicas"])
    # The agent's answer resolves the replica names to addresses.
    answer = cluster.agents["n1"].answer
    assert len(answer["engines"][0]["spec"]["replica_addresses"]) == 3


def test_detach_stops_then_removes_the_engine() -> None:
    cluster = Cluster()
    cluster.step()
    healthy_attached(cluster)
    cluster.set_spec("v1", attach_node="")
    cluster.step()
    assert cluster.store.get("engine", "v1").spec["desired"] == "stopped"
    assert cluster.volume().status["state"] == "detaching"
    cluster.step(2)
    assert cluster.store.list("engine") == []
    vol = cluster.volume()
    assert (vol.status["state"], vol.status["endpoint"]) == ("detached", "")


def test_node_down_degrades_then_replica_is_replenished_elsewhere_after_the_wait() -> None:
    cluster = Cluster(nodes_count=4, wait=60.0, down_after=10.0)
    cluster.step()
    cluster.create_volume("v1")
    cluster.step(2)
    cluster.set_spec("v1", attach_node="n1")
    cluster.step(3)
    used = {r.spec["node"] for r in cluster.replicas()}
    assert len(used) == 3 and "n1" in used
    victim = sorted(used - {"n1"})[0]
    spare = ({"n1", "n2", "n3", "n4"} - used).pop()
    cluster.up.discard(victim)
    cluster.step(seconds=11)
    assert not cluster.store.get("node", victim).status["ready"]
    vol = cluster.volume()
    assert vol.status["robustness"] == "degraded"
    assert any(f"node {victim} is down" in reason for reason in vol.status["reasons"]), vol.status["reasons"]
    # Not before the wait: the node may come back.
    cluster.step(seconds=40)
    assert {r.spec["node"] for r in cluster.replicas()} == used
    cluster.step(seconds=25)
    nodes_now = {r.spec["node"] for r in cluster.replicas()}
    assert nodes_now == (used - {victim}) | {spare}
    cluster.step(5)  # the new replica starts, the engine adds it, rebuilds (WO) and it turns RW
    vol = cluster.volume()
    assert vol.status["robustness"] == "healthy", vol.status
    engine = cluster.store.get("engine", "v1")
    assert {cluster.store.get("replica", n).spec["node"] for n in engine.spec["replicas"]} == nodes_now


def test_a_node_that_comes_back_within_the_wait_keeps_its_replica() -> None:
    cluster = Cluster(nodes_count=4)
    cluster.step()
    healthy_attached(cluster)
    before = {r.name for r in cluster.replicas()}
    victim = cluster.replicas()[1].spec["node"]
    cluster.up.discard(victim)
    cluster.step(2, seconds=10)
    assert cluster.volume().status["robustness"] == "degraded"
    cluster.up.add(victim)
    cluster.step(5)
    assert {r.name for r in cluster.replicas()} == before
    assert cluster.volume().status["robustness"] == "healthy"


def test_detached_volume_is_not_replenished_and_says_so() -> None:
    cluster = Cluster(nodes_count=4)
    cluster.step()
    cluster.create_volume("v1")
    cluster.step(2)
    before = {r.name for r in cluster.replicas()}
    cluster.up.discard(cluster.replicas()[0].spec["node"])
    cluster.step(2, seconds=50)
    assert {r.name for r in cluster.replicas()} == before
    vol = cluster.volume()
    assert vol.status["robustness"] == "degraded"
    assert any("attach it to rebuild" in reason for reason in vol.status["reasons"])


def test_all_nodes_down_faults_the_volume_and_never_discards_replicas() -> None:
    cluster = Cluster()
    cluster.step()
    healthy_attached(cluster)
    before = {r.name for r in cluster.replicas()}
    cluster.up.clear()
    cluster.step(3, seconds=70)
    assert {r.name for r in cluster.replicas()} == before
    vol = cluster.volume()
    assert vol.status["robustness"] == "faulted"
    assert vol.status["reasons"][0].startswith("no replica has good data")


def test_unfit_nodes_are_refused_with_reasons_and_used_once_they_fit() -> None:
    cluster = Cluster(nodes_count=3)
    cluster.agents["n3"].capacity = GiB  # too small for a 10 GiB volume at 100 % over-provisioning
    cluster.step()
    cluster.create_volume("v1", replicas=3, size=10 * GiB)
    cluster.step(3)
    assert sorted(r.spec["node"] for r in cluster.replicas()) == ["n1", "n2"]
    vol = cluster.volume()
    assert vol.status["robustness"] == "degraded"
    assert any("could not be placed" in reason for reason in vol.status["reasons"])
    refused = {item["node"]: item["reason"] for item in vol.status["scheduling"]}
    assert set(refused) == {"n3"} and refused["n3"]
    cluster.agents["n3"].capacity = 100 * GiB
    cluster.step(8)
    assert sorted(r.spec["node"] for r in cluster.replicas()) == ["n1", "n2", "n3"]
    assert cluster.volume().status["robustness"] == "healthy"


def test_too_few_nodes_for_hard_anti_affinity() -> None:
    cluster = Cluster(nodes_count=2)
    cluster.step()
    cluster.create_volume("v1", replicas=3)
    cluster.step(3)
    assert len(cluster.replicas()) == 2
    vol = cluster.volume()
    assert vol.status["robustness"] == "degraded"
    assert any("could not be placed" in reason for reason in vol.status["reasons"])


def test_delete_removes_engine_replicas_and_volume() -> None:
    cluster = Cluster()
    cluster.step()
    healthy_attached(cluster)
    cluster.set_spec("v1", deleting=True)
    cluster.step(2)
    assert cluster.store.list("volume") == []
    assert cluster.store.list("replica") == []
    assert cluster.store.list("engine") == []
    for agent in cluster.agents.values():
        assert agent.answer["replicas"] == [] and agent.answer["engines"] == []


def test_orphan_records_of_a_missing_volume_are_removed() -> None:
    cluster = Cluster()
    cluster.store.create(record_mod.Record(kind="replica", name="ghost-r1", spec={"volume": "ghost", "node": "n1"}))
    cluster.step()
    assert cluster.store.list("replica") == []


def test_node_goes_down_exactly_after_node_down_after() -> None:
    cluster = Cluster(nodes_count=1, down_after=10.0)
    cluster.step()
    result = cluster.nodes.reconcile("n1")
    assert isinstance(result, reconcile.Retry)
    assert result.delay == pytest.approx(10.0)
    cluster.up.clear()
    cluster.clock.advance(9.5)
    cluster.nodes.reconcile("n1")
    assert cluster.store.get("node", "n1").status["ready"]
    cluster.clock.advance(0.5)
    assert cluster.nodes.reconcile("n1") == reconcile.Success()
    node = cluster.store.get("node", "n1")
    assert not node.status["ready"]
    assert "no sync from the agent" in node.status["reasons"][0]


def test_disk_scheduled_bytes_follow_the_replicas() -> None:
    cluster = Cluster()
    cluster.step()
    cluster.create_volume("a", size=GiB)
    cluster.create_volume("b", size=2 * GiB)
    cluster.step(2)
    for name in ("n1", "n2", "n3"):
        assert cluster.store.get("node", name).status["disks"][f"/data/{name}"]["scheduled"] == 3 * GiB


def test_expanding_a_detached_volume_resizes_its_replicas() -> None:
    cluster = Cluster()
    cluster.step()
    cluster.create_volume("v1", size=GiB)
    cluster.step(3)
    cluster.set_spec("v1", size=2 * GiB)
    cluster.step()
    assert {r.spec["size"] for r in cluster.replicas()} == {2 * GiB}
