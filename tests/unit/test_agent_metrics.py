"""The agent's /metrics text: instance states, engine I/O counters, replica modes and rebuild progress."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from metalhorn.control.agent import metrics


@dataclasses.dataclass
class FakeAgent:
    synced: bool = True
    sync_errors: int = 0
    last_error: str = ""
    states: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    infos: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def node(self) -> str:
        return "node-1"

    def instance_states(self) -> list[tuple[str, str]]:
        return self.states

    def engine_infos(self) -> Mapping[str, Mapping[str, Any]]:
        return self.infos


def info(*, reads: int = 0, read_bytes: int = 0, writes: int = 0, write_bytes: int = 0) -> dict[str, Any]:
    return {
        "volume": "v1",
        "replicas": [
            {"address": "tcp://127.0.0.1:4001", "mode": "RW", "reason": ""},
            {"address": "tcp://127.0.0.1:4002", "mode": "WO", "reason": "rebuild started"},
        ],
        "counters": {"reads": reads, "read_bytes": read_bytes, "writes": writes, "write_bytes": write_bytes},
        "rebuilds": [{"address": "tcp://127.0.0.1:4002", "state": "copying", "done": 1 << 20, "total": 4 << 20}],
    }


def series(text: str) -> dict[str, str]:
    """sample line -> value, without HELP/TYPE lines."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def test_exact_series_for_one_engine() -> None:
    agent = FakeAgent(
        states=[("replica", "running"), ("replica", "running"), ("engine", "running"), ("replica", "pending")],
        infos={"v1": info(reads=3, read_bytes=12288, writes=2, write_bytes=8192)},
        sync_errors=4,
    )
    assert series(metrics.AgentMetrics(agent).render()) == {
        'metalhorn_agent_instances{node="node-1",kind="engine",state="running"}': "1",
        'metalhorn_agent_instances{node="node-1",kind="replica",state="pending"}': "1",
        'metalhorn_agent_instances{node="node-1",kind="replica",state="running"}': "2",
        'metalhorn_agent_sync_ok{node="node-1"}': "1",
        'metalhorn_agent_sync_errors_total{node="node-1"}': "4",
        'metalhorn_volume_read_ops_total{node="node-1",volume="v1"}': "3",
        'metalhorn_volume_read_bytes_total{node="node-1",volume="v1"}': "12288",
        'metalhorn_volume_write_ops_total{node="node-1",volume="v1"}': "2",
        'metalhorn_volume_write_bytes_total{node="node-1",volume="v1"}': "8192",
        'metalhorn_volume_trim_ops_total{node="node-1",volume="v1"}': "0",
        'metalhorn_volume_trim_bytes_total{node="node-1",volume="v1"}': "0",
        'metalhorn_volume_write_zeroes_ops_total{node="node-1",volume="v1"}': "0",
        'metalhorn_volume_write_zeroes_bytes_total{node="node-1",volume="v1"}': "0",
        'metalhorn_volume_flush_ops_total{node="node-1",volume="v1"}': "0",
        'metalhorn_volume_io_errors_total{node="node-1",volume="v1"}': "0",
        'metalhorn_engine_replica_mode{node="node-1",volume="v1",replica="tcp://127.0.0.1:4001",mode="RW"}': "1",
        'metalhorn_engine_replica_mode{node="node-1",volume="v1",replica="tcp://127.0.0.1:4002",mode="WO"}': "1",
        'metalhorn_rebuild_done_bytes{node="node-1",volume="v1",replica="tcp://127.0.0.1:4002"}': "1048576",
        'metalhorn_rebuild_total_bytes{node="node-1",volume="v1",replica="tcp://127.0.0.1:4002"}': "4194304",
    }


def test_families_are_typed_once_and_in_order() -> None:
    text = metrics.AgentMetrics(FakeAgent(infos={"v1": info()})).render()
    types = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE")]
    assert types[:3] == [
        ["metalhorn_agent_instances", "gauge"],
        ["metalhorn_agent_sync_ok", "gauge"],
        ["metalhorn_agent_sync_errors_total", "counter"],
    ]
    assert ["metalhorn_volume_write_bytes_total", "counter"] in types
    assert len(types) == len({t[0] for t in types})


def test_a_stopped_engine_and_a_failing_sync_drop_out() -> None:
    agent = FakeAgent(infos={"v1": info(writes=1, write_bytes=4096)})
    collector = metrics.AgentMetrics(agent)
    assert 'metalhorn_volume_write_bytes_total{node="node-1",volume="v1"} 4096' in collector.render()
    agent.infos = {}
    agent.last_error = "connection refused"
    text = collector.render()
    assert "volume=" not in text
    assert 'metalhorn_agent_sync_ok{node="node-1"} 0' in text


def test_renderer_is_empty_until_the_agent_exists() -> None:
    holder: list[FakeAgent] = []
    render = metrics.renderer(lambda: holder[0] if holder else None)
    assert render() == ""
    holder.append(FakeAgent())
    assert 'metalhorn_agent_sync_ok{node="node-1"} 1' in render()
