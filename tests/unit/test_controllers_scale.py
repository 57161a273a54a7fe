"""A volume's reconcile pass and an agent's sync read only their own replica records, not the cluster's:
with many volumes the manager's cost per pass stays flat (bench/control_plane measures the time)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.controller_cluster import Cluster, GiB

from metalhorn.control.store import record as record_mod
from metalhorn.testing import store as store_kit


class CountingReads:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replicas_read = 0
        original = store_kit.MemoryStore.list

        def counted(store: store_kit.MemoryStore, kind: str, **filters: Any) -> list[record_mod.Record]:
            found = original(store, kind, **filters)
            if kind == "replica":
                self.replicas_read += len(found)
            return found

        monkeypatch.setattr(store_kit.MemoryStore, "list", counted)


def settled_cluster(volumes: int) -> Cluster:
    cluster = Cluster()
    for agent in cluster.agents.values():
        agent.capacity = 10_000 * GiB
    cluster.step()
    for i in range(volumes):
        cluster.create_volume(f"v{i}", size=GiB)
    cluster.step(3)
    assert all(cluster.volume(f"v{i}").status["robustness"] == "healthy" for i in range(volumes))
    return cluster


def test_a_volume_pass_reads_only_its_own_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = settled_cluster(40)
    reads = CountingReads(monkeypatch)
    cluster.volumes.reconcile("v7")
    assert reads.replicas_read == 3


def test_an_agent_sync_reads_only_its_nodes_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = settled_cluster(40)
    reads = CountingReads(monkeypatch)
    cluster.agents["n1"].sync()
    assert reads.replicas_read == 2 * 40  # before and after merging the report, one replica per volume


def test_an_unowned_replica_record_is_still_served_to_its_node() -> None:
    cluster = Cluster()
    cluster.step()
    cluster.store.create(
        record_mod.Record(kind="replica", name="loose-r1", spec={"volume": "loose", "node": "n2", "size": GiB})
    )
    answer = cluster.agents["n2"].sync().answer
    assert [r["name"] for r in answer["replicas"]] == ["loose-r1"]
    assert cluster.agents["n1"].sync().answer["replicas"] == []
