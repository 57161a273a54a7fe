"""The agent's /metrics: this node's instances, and for each engine running here its I/O, replica modes, rebuild.

Everything is read at scrape time from what the agent already holds: the instance manager's states and each
running engine's last `info` answer over its control socket (the agent asks once a second while it reconciles
the engine's replicas). So a scrape never talks to an engine, and a series lags the engine by about a second.

The engine's counters are exported as Prometheus counters: they restart from zero when the engine process
restarts, which Prometheus' rate() treats as a counter reset. Replicas are named by address here (the engine
knows them by address); the manager's /metrics names them by record (`metalhorn_replica_mode`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from metalhorn.common import metrics
from metalhorn.control.agent import specs

# engine `info.counters` key -> (metric name, help)
IO_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("reads", "metalhorn_volume_read_ops_total", "Read requests the volume's engine served."),
    ("read_bytes", "metalhorn_volume_read_bytes_total", "Bytes the volume's engine read."),
    ("writes", "metalhorn_volume_write_ops_total", "Write requests the volume's engine completed."),
    ("write_bytes", "metalhorn_volume_write_bytes_total", "Bytes written through the volume's engine."),
    ("trims", "metalhorn_volume_trim_ops_total", "Trim requests the volume's engine completed."),
    ("trim_bytes", "metalhorn_volume_trim_bytes_total", "Bytes trimmed through the volume's engine."),
    ("zeroes", "metalhorn_volume_write_zeroes_ops_total", "Write-zeroes requests the volume's engine completed."),
    ("zero_bytes", "metalhorn_volume_write_zeroes_bytes_total", "Bytes zeroed through the volume's engine."),
    ("flushes", "metalhorn_volume_flush_ops_total", "Flushes the volume's engine completed."),
    ("errors", "metalhorn_volume_io_errors_total", "Requests the volume's engine failed (no RW replica, ...)."),
)


class AgentView(Protocol):
    """What the metrics read from the agent (control/agent/agent.py's Agent)."""

    synced: bool
    sync_errors: int
    last_error: str

    @property
    def node(self) -> str: ...

    def instance_states(self) -> list[tuple[str, str]]:
        """(kind, state) of every desired instance."""
        ...

    def engine_infos(self) -> Mapping[str, Mapping[str, Any]]:
        """volume -> the last `info` answer of its engine running on this node."""
        ...


class AgentMetrics:
    def __init__(self, agent: AgentView) -> None:
        self._agent = agent
        self.registry = registry = metrics.Registry()
        self.instances = registry.gauge(
            "metalhorn_agent_instances", "Instances on this node by kind and state.", labels=("node", "kind", "state")
        )
        self.sync_ok = registry.gauge(
            "metalhorn_agent_sync_ok", "1 while the last sync with the manager succeeded.", labels=("node",)
        )
        self.sync_errors = registry.counter(
            "metalhorn_agent_sync_errors_total", "Failed syncs with the manager.", labels=("node",)
        )
        self.io = {key: registry.counter(name, help, labels=("node", "volume")) for key, name, help in IO_COUNTERS}
        self.replica_mode = registry.gauge(
            "metalhorn_engine_replica_mode",
            "1 for the mode (RW, WO, ERR) the volume's engine on this node has its replica at this address in.",
            labels=("node", "volume", "replica", "mode"),
        )
        self.rebuild_done = registry.gauge(
            "metalhorn_rebuild_done_bytes",
            "Bytes copied so far by the running rebuild of a replica.",
            labels=("node", "volume", "replica"),
        )
        self.rebuild_total = registry.gauge(
            "metalhorn_rebuild_total_bytes",
            "Bytes the running rebuild of a replica copies in all.",
            labels=("node", "volume", "replica"),
        )
        registry.on_collect(self._collect)

    def render(self) -> str:
        return self.registry.render()

    def _collect(self) -> None:
        agent = self._agent
        node = agent.node
        gauges = (self.instances, self.replica_mode, self.rebuild_done, self.rebuild_total)
        for gauge in gauges:
            gauge.clear()
        for counter in self.io.values():
            counter.clear()
        counts: dict[tuple[str, str], int] = {}
        for kind, state in agent.instance_states():
            counts[(kind, state)] = counts.get((kind, state), 0) + 1
        for (kind, state), count in counts.items():
            self.instances.labels(node=node, kind=kind, state=state).set(count)
        self.sync_ok.labels(node=node).set(1 if agent.synced and not agent.last_error else 0)
        # The agent's own tally only grows, so mirroring it keeps the counter monotonic.
        self.sync_errors.labels(node=node).value = float(agent.sync_errors)
        for volume, info in agent.engine_infos().items():
            counters = info.get("counters")
            if isinstance(counters, Mapping):
                for key, io_counter in self.io.items():
                    io_counter.labels(node=node, volume=volume).value = float(counters.get(key) or 0)
            for replica in info.get("replicas") or []:
                if isinstance(replica, Mapping) and replica.get("address"):
                    self.replica_mode.labels(
                        node=node, volume=volume, replica=str(replica["address"]), mode=str(replica.get("mode"))
                    ).set(1)
            rebuild = specs.rebuild_progress(info)
            if rebuild is not None:
                labels = {"node": node, "volume": volume, "replica": str(rebuild.get("replica") or "")}
                self.rebuild_done.labels(**labels).set(float(rebuild["done"]))
                self.rebuild_total.labels(**labels).set(float(rebuild["total"]))


def renderer(holder: Callable[[], AgentView | None]) -> Callable[[], str]:
    """A /metrics callback for the status server that works before the agent exists (empty until then)."""
    built: list[AgentMetrics] = []

    def render() -> str:
        agent = holder()
        if agent is None:
            return ""
        if not built:
            built.append(AgentMetrics(agent))
        return built[0].render()

    return render
