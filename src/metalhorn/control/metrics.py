"""The manager's /metrics: gauges computed from the store at scrape time, controller counters from the runners.

Exported: volumes by state/robustness, each volume's robustness, replica modes, rebuild and expansion
progress, node readiness and disk usage, and per controller the reconcile results and errors by code. Volume
I/O is counted by the engine, so the agent of the engine's node exports it (control/agent/metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from metalhorn.common import metrics
from metalhorn.control import reconcile
from metalhorn.control.store import base


class ManagerMetrics:
    def __init__(self, *, store: base.Store, runners: Sequence[reconcile.Runner]) -> None:
        self._store = store
        self._runners = runners
        self.registry = registry = metrics.Registry()
        self.volumes = registry.gauge(
            "metalhorn_volumes", "Volumes by state and robustness.", labels=("state", "robustness")
        )
        self.robustness = registry.gauge(
            "metalhorn_volume_robustness", "1 for the volume's current robustness.", labels=("volume", "robustness")
        )
        self.replica_mode = registry.gauge(
            "metalhorn_replica_mode",
            "1 for the replica's current mode (RW, WO, ERR, or its process state).",
            labels=("volume", "replica", "node", "mode"),
        )
        self.rebuild = registry.gauge(
            "metalhorn_volume_rebuild_progress", "Fraction of the running rebuild done (0..1).", labels=("volume",)
        )
        self.expansion = registry.gauge(
            "metalhorn_volume_expansion_progress",
            "Fraction of the volume's replicas serving the new size during an expansion (0..1).",
            labels=("volume",),
        )
        self.node_ready = registry.gauge("metalhorn_node_ready", "1 while the node's agent syncs.", labels=("node",))
        self.disk_bytes = registry.gauge(
            "metalhorn_disk_bytes",
            "Disk capacity, available and scheduled bytes as agents report them.",
            labels=("node", "disk", "kind"),
        )
        self.reconciles = registry.counter(
            "metalhorn_controller_reconcile_total",
            "Reconcile results per controller since the manager started.",
            labels=("controller", "result"),
        )
        self.errors = registry.counter(
            "metalhorn_controller_errors_total",
            "Reconcile errors per controller and error code since the manager started.",
            labels=("controller", "code"),
        )
        registry.on_collect(self._collect)

    def render(self) -> str:
        return self.registry.render()

    def _collect(self) -> None:
        for family in (self.volumes, self.robustness, self.replica_mode, self.rebuild, self.expansion, self.node_ready):
            family.clear()
        self.disk_bytes.clear()
        counts: dict[tuple[str, str], int] = {}
        for volume in self._store.list("volume"):
            state = str(volume.status.get("state", "creating"))
            robustness = str(volume.status.get("robustness", "unknown"))
            counts[(state, robustness)] = counts.get((state, robustness), 0) + 1
            self.robustness.labels(volume=volume.name, robustness=robustness).set(1)
            for replica in volume.status.get("replicas") or []:
                self.replica_mode.labels(
                    volume=volume.name,
                    replica=str(replica.get("name", "")),
                    node=str(replica.get("node", "")),
                    mode=str(replica.get("mode", "")),
                ).set(1)
            rebuild = volume.status.get("rebuild")
            if isinstance(rebuild, dict) and rebuild.get("total"):
                self.rebuild.labels(volume=volume.name).set(float(rebuild.get("done", 0)) / float(rebuild["total"]))
            grow = volume.status.get("expansion")
            if isinstance(grow, dict) and grow.get("total"):
                self.expansion.labels(volume=volume.name).set(float(grow.get("done", 0)) / float(grow["total"]))
        for (state, robustness), count in counts.items():
            self.volumes.labels(state=state, robustness=robustness).set(count)
        for node in self._store.list("node"):
            self.node_ready.labels(node=node.name).set(1 if node.status.get("ready") else 0)
            for path, facts in (node.status.get("disks") or {}).items():
                for kind in ("capacity", "available", "scheduled"):
                    self.disk_bytes.labels(node=node.name, disk=path, kind=kind).set(float(facts.get(kind) or 0))
        for runner in self._runners:
            stats = runner.stats
            for result in ("success", "retry", "fatal"):
                # Counters mirror the runner's own tallies, which only grow.
                self.reconciles.labels(controller=runner.name, result=result).value = float(getattr(stats, result))
            for code, count in stats.errors.items():
                self.errors.labels(controller=runner.name, code=code).value = float(count)
