"""Expansion progress: a resized replica counts once its agent reports a new process running; the volume shows
`size` (what every replica serves) and `expansion` {size, done, total} until then."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.controller_cluster import Cluster, FakeAgent, GiB

from metalhorn.control.controllers import expansion
from metalhorn.control.store import record as record_mod


def replica(**status: Any) -> record_mod.Record:
    return record_mod.Record(kind="replica", name="v1-r1", spec={"volume": "v1", "size": GiB}, status=status)


@pytest.mark.parametrize(
    ("before", "after", "done"),
    [
        pytest.param({"state": "running", "pid": 7}, {"state": "running", "pid": 7}, False, id="old-process"),
        pytest.param({"state": "running", "pid": 7}, {"state": "pending", "pid": None}, False, id="restarting"),
        pytest.param({"state": "running", "pid": 7}, {"state": "running", "pid": 8}, True, id="new-process"),
        pytest.param({"state": "failed", "pid": None}, {"state": "running", "pid": 9}, True, id="was-down"),
        pytest.param({"state": "running", "pid": 7}, {"state": "failed", "pid": None}, False, id="crashed"),
    ],
)
def test_a_replica_is_expanded_once_a_new_process_runs(
    before: dict[str, Any], after: dict[str, Any], done: bool
) -> None:
    marked = expansion.mark(replica(**before), size=2 * GiB)
    assert marked.spec["size"] == 2 * GiB
    assert marked.status[expansion.MARKER] == {"from_size": GiB, "from_pid": before["pid"]}
    reported = marked.with_(status={**marked.status, **after})
    assert expansion.expanded(reported) is done
    assert expansion.MARKER not in expansion.cleared(reported).status


def test_resizing_twice_keeps_the_first_marker() -> None:
    once = expansion.mark(replica(state="running", pid=7), size=2 * GiB)
    twice = expansion.mark(once, size=3 * GiB)
    assert twice.spec["size"] == 3 * GiB
    assert twice.status[expansion.MARKER] == {"from_size": GiB, "from_pid": 7}


def test_progress_of_the_volume() -> None:
    plain = replica(state="running", pid=1)
    waiting = expansion.mark(replica(state="running", pid=2), size=2 * GiB)
    assert expansion.progress([plain, plain], size=GiB) == expansion.Progress(size=GiB, expansion=None)
    assert expansion.progress([plain, waiting, waiting], size=2 * GiB) == expansion.Progress(
        size=GiB, expansion={"size": 2 * GiB, "done": 1, "total": 3}
    )


def test_expanding_a_volume_reports_progress_until_every_replica_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    restarted: set[str] = set()
    original = FakeAgent.report

    def report(agent: FakeAgent) -> dict[str, Any]:
        body = original(agent)
        if agent.name in restarted:  # this node's agent replaced its replica processes
            for item in body["replicas"].values():
                item["pid"] = 101
        return body

    monkeypatch.setattr(FakeAgent, "report", report)
    cluster = Cluster()
    cluster.step()
    cluster.create_volume("v1", size=GiB)
    cluster.step(3)
    status = cluster.volume().status
    assert (status["size"], status["expansion"]) == (GiB, None)

    cluster.set_spec("v1", size=2 * GiB)
    cluster.step()
    status = cluster.volume().status
    assert (status["size"], status["expansion"]) == (GiB, {"size": 2 * GiB, "done": 0, "total": 3})

    restarted.add("n1")
    cluster.step()
    assert cluster.volume().status["expansion"] == {"size": 2 * GiB, "done": 1, "total": 3}

    restarted.update({"n2", "n3"})
    cluster.step()
    status = cluster.volume().status
    assert (status["size"], status["expansion"], status["robustness"]) == (2 * GiB, None, "healthy")
    assert all(expansion.MARKER not in r.status for r in cluster.replicas())
