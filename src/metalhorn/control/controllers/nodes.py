"""Node controller: a node is ready while its agent syncs; `node_down_after` seconds of silence make it down.

The agent sync handler marks a node ready with a fresh `last_heartbeat`; this controller is the only one that
turns it down again, and keeps each disk's `scheduled` bytes (what replicas were promised) in the status.
It asks to run again exactly when the node would go down, so detection does not wait for a resync.
"""

from __future__ import annotations

import logging

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors, logs
from metalhorn.control import reconcile
from metalhorn.control.controllers import placement
from metalhorn.control.controllers import settings as settings_mod
from metalhorn.control.store import base

log = logging.getLogger(__name__)


class NodeController:
    def __init__(self, *, store: base.Store, clock: clock_mod.Clock) -> None:
        self._store = store
        self._clock = clock

    def names(self) -> list[str]:
        return [node.name for node in self._store.list("node")]

    def reconcile(self, name: str) -> reconcile.Result:
        try:
            node = self._store.get("node", name)
        except errors.NotFound:
            return reconcile.Success()
        settings = settings_mod.load(self._store)
        now = self._clock.wall()
        last = float(node.status.get("last_heartbeat") or 0.0)
        silent = now - last
        ready = bool(last) and silent < settings.node_down_after
        status = dict(node.status)
        status["ready"] = ready
        if ready:
            status["reasons"] = []
        elif last:
            status["reasons"] = [
                f"no sync from the agent of node {name} for {silent:.0f}s (down after {settings.node_down_after:g}s);"
                " check that `metalhorn agent --node " + name + "` runs and reaches the manager"
            ]
        else:
            status["reasons"] = [f"the agent of node {name} has not synced yet"]
        scheduled = placement.scheduled_bytes(r for r in self._store.list("replica") if r.spec.get("node") == name)
        disks = {path: dict(facts) for path, facts in (status.get("disks") or {}).items()}
        for path, facts in disks.items():
            facts["scheduled"] = scheduled.get((name, path), 0)
        status["disks"] = disks
        if status != node.status:
            if node.status.get("ready") and not ready:
                log.warning("node down %s", logs.kv(node=name, silent=f"{silent:.1f}s"))
            self._store.update(node.with_(status=status))
        if ready:
            return reconcile.Retry(delay=max(0.05, last + settings.node_down_after - now))
        return reconcile.Success()
