"""Volume controller: one volume's intent -> replica and engine records, and the volume's status.

Each pass, for one volume:
1. Mark failures. A replica is failed while its node is down, its agent reports it failed, or the running engine
   has it in ERR; `status.failed_at` remembers since when (cleared when it is well again).
2. Schedule. Missing replicas (a new volume) are placed by storage/scheduler.py at once; a failed replica is
   replaced once it stayed failed for `replica_replenishment_wait` -- only while the volume is attached and
   still has a healthy replica to rebuild from, so a cluster-wide outage never discards the only copies.
   The replacement record is created first, then the failed record is deleted (its agent removes the files).
3. Engine. Attached (`spec.attach_node` set): an engine record on that node names the running, non-failed
   replicas; the agent starts the engine, and adds replicas that appear (rebuild) or drop out through the
   engine's control socket. Detached: the engine is asked to stop, then its record is deleted.
4. Status: state, robustness healthy/degraded/faulted with reasons, endpoint, per-replica modes, rebuild.

Deleting a volume (`spec.deleting`, set by the API) deletes its engine and replica records, then the volume;
agents stop processes whose records are gone and delete the replica directories.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from metalhorn.common import addresses, errors, logs
from metalhorn.common import clock as clock_mod
from metalhorn.control import reconcile
from metalhorn.control.controllers import expansion, placement
from metalhorn.control.controllers import settings as settings_mod
from metalhorn.control.store import base
from metalhorn.control.store import record as record_mod
from metalhorn.storage import scheduler

log = logging.getLogger(__name__)

TRANSITION_RETRY = 0.5  # seconds between passes while something is on its way (attaching, creating, ...)


def new_replica_name(volume: str) -> str:
    return f"{volume}-r-{uuid.uuid4().hex[:8]}"


class VolumeController:
    def __init__(
        self,
        *,
        store: base.Store,
        clock: clock_mod.Clock,
        replica_name: Callable[[str], str] = new_replica_name,
    ) -> None:
        self._store = store
        self._clock = clock
        self._replica_name = replica_name

    def names(self) -> list[str]:
        names = {vol.name for vol in self._store.list("volume")}
        for kind in ("replica", "engine"):
            names.update(str(rec.spec.get("volume", "")) for rec in self._store.list(kind))
        names.discard("")
        return sorted(names)

    def reconcile(self, name: str) -> reconcile.Result:
        replicas = self._store.list("replica", volume=name)
        engine = _get(self._store, "engine", name)
        try:
            volume = self._store.get("volume", name)
        except errors.NotFound:
            self._remove(name, replicas, engine, why="its volume is gone")
            return reconcile.Success()
        if volume.spec.get("deleting"):
            self._remove(name, replicas, engine, why="the volume is being deleted")
            self._store.delete("volume", name)
            log.info("volume deleted %s", logs.kv(volume=name))
            return reconcile.Success()
        return _Pass(self, volume, replicas, engine).run()

    def _remove(
        self, name: str, replicas: list[record_mod.Record], engine: record_mod.Record | None, *, why: str
    ) -> None:
        if engine is not None:
            _delete(self._store, engine)
        for replica in replicas:
            _delete(self._store, replica)
        if engine is not None or replicas:
            log.info("records removed %s", logs.kv(volume=name, replicas=len(replicas), why=why))


class _Pass:
    """One reconcile pass over one volume: the facts gathered once, then the steps in order."""

    def __init__(
        self,
        controller: VolumeController,
        volume: record_mod.Record,
        replicas: list[record_mod.Record],
        engine: record_mod.Record | None,
    ) -> None:
        self.c = controller
        self.store = controller._store
        self.volume = volume
        self.replicas = replicas
        self.engine = engine
        self.settings = settings_mod.load(self.store)
        self.now = controller._clock.wall()
        self.nodes = {node.name: node for node in self.store.list("node")}
        self.wanted = int(volume.spec.get("replicas", 3))
        self.size = int(volume.spec.get("size", 0))
        self.reasons: list[str] = []
        self.scheduling: list[dict[str, str]] | None = None
        self.retry: float | None = None
        self.modes: dict[str, tuple[str, str]] = {}  # replica address -> (mode, reason), from the running engine
        if engine is not None and engine.status.get("state") == "running":
            for item in engine.status.get("replicas") or []:
                if isinstance(item, dict) and item.get("address"):
                    self.modes[_normal(str(item["address"]))] = (str(item.get("mode", "")), str(item.get("reason", "")))

    def run(self) -> reconcile.Result:
        self.propagate_size()
        self.mark_failures()
        self.schedule()
        self.converge_engine()
        self.write_status()
        if self.retry is not None:
            return reconcile.Retry(delay=max(0.05, self.retry))
        return reconcile.Success()

    def _want_retry(self, delay: float) -> None:
        self.retry = delay if self.retry is None else min(self.retry, delay)

    def propagate_size(self) -> None:
        """An expanded volume (the API allows it only while detached) gives its replicas the new size; the
        agent restarts each replica process with it (expansion.py tells when it did)."""
        updated = []
        for replica in self.replicas:
            if self.engine is None and replica.spec.get("size") != self.size:
                replica = self.store.update(expansion.mark(replica, size=self.size))  # noqa: PLW2901
            elif expansion.MARKER in replica.status and expansion.expanded(replica):
                replica = self.store.update(expansion.cleared(replica))  # noqa: PLW2901
            updated.append(replica)
        self.replicas = updated

    # -- 1. failures ----------------------------------------------------------------------------------------------
    def failure(self, replica: record_mod.Record) -> str | None:
        node_name = str(replica.spec.get("node", ""))
        node = self.nodes.get(node_name)
        if node is None or not node.status.get("ready"):
            return f"node {node_name} is down"
        if replica.status.get("state") == "failed":
            return f"the replica failed: {replica.status.get('error') or 'exited'}"
        address = replica.status.get("address")
        if address and self.modes.get(_normal(str(address)), ("", ""))[0] == "ERR":
            return f"the engine set it to ERR: {self.modes[_normal(str(address))][1] or 'I/O error'}"
        return None

    def mark_failures(self) -> None:
        updated = []
        for replica in self.replicas:
            why = self.failure(replica)
            status = dict(replica.status)
            if why:
                status.setdefault("failed_at", self.now)
                status["failure"] = why
                if why.startswith("node "):
                    status["state"] = "failed"
                    status["error"] = why
            else:
                status.pop("failed_at", None)
                status.pop("failure", None)
            updated.append(self.store.update(replica.with_(status=status)) if status != replica.status else replica)
        self.replicas = updated

    def live(self) -> list[record_mod.Record]:
        return [r for r in self.replicas if not r.status.get("failure")]

    def failed(self) -> list[record_mod.Record]:
        return [r for r in self.replicas if r.status.get("failure")]

    def healthy_count(self) -> int:
        """Replicas with good data: RW in the running engine, else running replicas."""
        live = self.live()
        if self.modes:
            return sum(1 for r in live if self.mode(r) == "RW")
        return sum(1 for r in live if r.status.get("state") == "running")

    def mode(self, replica: record_mod.Record) -> str:
        address = replica.status.get("address")
        if address and _normal(str(address)) in self.modes:
            return self.modes[_normal(str(address))][0]
        return ""

    # -- 2. scheduling ----------------------------------------------------------------------------------------------
    def schedule(self) -> None:
        live, failed = self.live(), self.failed()
        missing = max(0, self.wanted - len(self.replicas))
        expired: list[record_mod.Record] = []
        can_replace = self.engine is not None and self.healthy_count() >= 1
        wait = self.settings.replica_replenishment_wait
        for replica in failed:
            left = float(replica.status.get("failed_at", self.now)) + wait - self.now
            if left <= 0:
                expired.append(replica)
            else:
                self._want_retry(left)
            self.reasons.append(
                f"replica {replica.name} on node {replica.spec.get('node')}: {replica.status['failure']}"
            )
        if failed and not can_replace:
            if self.engine is None:
                self.reasons.append("failed replicas are replaced while the volume is attached; attach it to rebuild")
            else:
                self.reasons.append("no healthy replica to rebuild from; bring a replica's node back")
            expired = []
        count = min(missing + len(expired), max(0, self.wanted - len(live)))
        if count <= 0:
            return
        try:
            decision = scheduler.schedule(
                size=self.size,
                count=count,
                nodes=self.candidates(),
                existing=placement.placements(live),
                policy=placement.policy(self.volume, self.settings),
            )
        except errors.InvalidArgument as exc:
            self.reasons.append(f"cannot schedule replicas: {exc.message}")
            return
        self.scheduling = [{"node": r.node, "disk": r.disk, "reason": r.reason} for r in decision.refusals]
        for place in decision.placements:
            self.create_replica(place)
        replaced = expired[: max(0, len(decision.placements) - missing)]
        for replica in replaced:
            log.info(
                "replica replaced %s",
                logs.kv(volume=self.volume.name, replica=replica.name, node=replica.spec.get("node")),
            )
            _delete(self.store, replica)
        self.replicas = [r for r in self.replicas if r not in replaced]
        if decision.unplaced:
            self.reasons.append(
                f"{decision.unplaced} of {count} replica(s) could not be placed; status.scheduling says why for "
                "each node and disk -- add nodes or disks, or relax the volume's selectors and anti-affinity"
            )
            self._want_retry(5.0)

    def candidates(self) -> list[scheduler.NodeCandidate]:
        scheduled = placement.scheduled_bytes(self.store.list("replica"))
        return [placement.node_candidate(node, scheduled=scheduled) for node in self.nodes.values()]

    def create_replica(self, place: scheduler.Placement) -> None:
        name = self.c._replica_name(self.volume.name)
        record = record_mod.Record(
            kind="replica",
            name=name,
            spec={
                "volume": self.volume.name,
                "node": place.node,
                "disk": place.disk,
                "size": self.size,
                "desired": "running",
                "data_dir": f"{place.disk.rstrip('/')}/replicas/{name}",
            },
            status={"state": "pending"},
            owner_id=place.node,
        )
        self.replicas.append(self.store.create(record))
        log.info("replica scheduled %s", logs.kv(volume=self.volume.name, replica=name, node=place.node))

    # -- 3. engine --------------------------------------------------------------------------------------------------
    def converge_engine(self) -> None:
        attach = str(self.volume.spec.get("attach_node", ""))
        engine = self.engine
        if engine is not None and (not attach or engine.spec.get("node") != attach):
            self.stop_engine(engine)
            return
        if not attach:
            return
        live = self.live()
        ready = sorted(r.name for r in live if r.status.get("state") == "running" and r.status.get("address"))
        if engine is None:
            waiting = sorted(r.name for r in live if r.name not in ready)
            if not ready or waiting:
                self.reasons.append(f"waiting for replicas to start: {', '.join(waiting) or 'none scheduled yet'}")
                self._want_retry(TRANSITION_RETRY)
                return
            self.engine = self.store.create(
                record_mod.Record(
                    kind="engine",
                    name=self.volume.name,
                    spec={
                        "volume": self.volume.name,
                        "node": attach,
                        "size": self.size,
                        "replicas": ready,
                        "desired": "running",
                        "listen": "",
                    },
                    status={"state": "pending"},
                    owner_id=attach,
                )
            )
            log.info("engine created %s", logs.kv(volume=self.volume.name, node=attach, replicas=len(ready)))
            self._want_retry(TRANSITION_RETRY)
            return
        spec = dict(engine.spec)
        if ready:  # never leave a running engine without replicas: keep the last list instead
            spec["replicas"] = ready
        spec["desired"] = "running"
        spec["size"] = self.size
        if spec != engine.spec:
            self.engine = self.store.update(engine.with_(spec=spec))
        if engine.status.get("state") != "running":
            self._want_retry(TRANSITION_RETRY)

    def stop_engine(self, engine: record_mod.Record) -> None:
        node = self.nodes.get(str(engine.spec.get("node", "")))
        stopped = engine.status.get("state") in (None, "stopped", "pending", "failed")
        if stopped or node is None or not node.status.get("ready"):
            _delete(self.store, engine)
            self.engine = None
            self.modes = {}
            log.info("engine removed %s", logs.kv(volume=self.volume.name, node=engine.spec.get("node")))
            return
        if engine.spec.get("desired") != "stopped":
            self.engine = self.store.update(engine.with_(spec={**engine.spec, "desired": "stopped"}))
        self._want_retry(TRANSITION_RETRY)

    # -- 4. status ----------------------------------------------------------------------------------------------------
    def write_status(self) -> None:
        volume, engine = self.volume, self.engine
        attach = str(volume.spec.get("attach_node", ""))
        old = volume.status
        live = self.live()
        running = [r for r in live if r.status.get("state") == "running"]
        engine_up = engine is not None and engine.status.get("state") == "running"
        endpoint = str(engine.status.get("endpoint") or "") if engine_up and engine is not None else ""
        if attach:
            state = "attached" if engine_up and endpoint else "attaching"
        elif engine is not None:
            state = "detaching"
        elif old.get("state", "creating") == "creating" and (len(running) < self.wanted or not running):
            state = "creating"
        else:
            state = "detached"
        healthy = self.healthy_count()
        if not self.replicas:
            robustness = "unknown"
        elif healthy == 0:
            robustness = "unknown" if state == "creating" else "faulted"
        elif healthy >= self.wanted:
            robustness = "healthy"
        else:
            robustness = "degraded"
        if robustness == "faulted":
            state = "faulted" if state not in ("attaching", "detaching") else state
            self.reasons.insert(0, "no replica has good data: " + ("; ".join(self.reasons) or "none is running"))
        for replica in live:
            if self.mode(replica) == "WO":
                self.reasons.append(f"replica {replica.name} is rebuilding")
            elif self.modes and not self.mode(replica):
                self.reasons.append(f"replica {replica.name} is starting; the engine adds and rebuilds it next")
        if engine is not None and engine.status.get("error"):
            self.reasons.append(f"engine on node {engine.spec.get('node')}: {engine.status['error']}")
        if engine is not None:
            node = self.nodes.get(str(engine.spec.get("node", "")))
            if node is None or not node.status.get("ready"):
                self.reasons.append(f"the engine's node {engine.spec.get('node')} is down")
        status: dict[str, Any] = {
            "state": state,
            "robustness": robustness,
            "reasons": self.reasons,
            "endpoint": endpoint if state == "attached" else "",
            "block_device": str(engine.status.get("block_device") or "") if engine_up and engine else "",
            "node": str(engine.spec.get("node", "")) if engine is not None else "",
            "replicas": [
                {
                    "name": r.name,
                    "node": str(r.spec.get("node", "")),
                    "mode": self.mode(r) or ("ERR" if r.status.get("failure") else str(r.status.get("state", ""))),
                    "address": str(r.status.get("address") or ""),
                }
                for r in sorted(self.replicas, key=lambda rec: rec.name)
            ],
            "scheduling": self.scheduling if self.scheduling is not None else old.get("scheduling", []),
            "rebuild": (engine.status.get("rebuild") if engine_up and engine is not None else None) or None,
        }
        grown = expansion.progress(self.replicas, size=self.size)
        status["size"], status["expansion"] = grown.size, grown.expansion
        if state in ("creating", "attaching", "detaching") or status["rebuild"] or status["expansion"]:
            self._want_retry(TRANSITION_RETRY)
        if status != old:
            if (old.get("robustness"), old.get("state")) != (robustness, state):
                log.info(
                    "volume status %s",
                    logs.kv(volume=volume.name, state=state, robustness=robustness, healthy=healthy),
                )
            self.volume = self.store.update(volume.with_(status=status))


def _get(store: base.Store, kind: str, name: str) -> record_mod.Record | None:
    try:
        return store.get(kind, name)
    except errors.NotFound:
        return None


def _delete(store: base.Store, record: record_mod.Record) -> None:
    with contextlib.suppress(errors.NotFound):
        store.delete(record.kind, record.name)


def _normal(address: str) -> str:
    try:
        parsed = addresses.parse_address(address, what="replica address")
    except errors.InvalidArgument:
        return address
    return str(parsed)
