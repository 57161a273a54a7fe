"""The manager: one store, the controllers as asyncio tasks (one Runner each), and the REST API's context.

Built by daemons/manager.py (which adds the HTTP server) and by tests. Everything the manager knows lives in
the store; a restarted manager reads it back and carries on, while agents keep their processes running -- the
data path never passes through here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from metalhorn.common import clock as clock_mod
from metalhorn.common import logs
from metalhorn.control import metrics, reconcile
from metalhorn.control.api import context as context_mod
from metalhorn.control.controllers import nodes, services, volumes
from metalhorn.control.store import base

log = logging.getLogger(__name__)


class Manager:
    def __init__(self, *, store: base.Store, clock: clock_mod.Clock, token: str, resync_interval: float = 2.0) -> None:
        self.store = store
        self.clock = clock
        self.volume_controller = volumes.VolumeController(store=store, clock=clock)
        self.node_controller = nodes.NodeController(store=store, clock=clock)
        self.runners = [
            reconcile.Runner(
                name="node",
                reconcile=self.node_controller.reconcile,
                keys=self.node_controller.names,
                clock=clock,
                resync_interval=resync_interval,
            ),
            reconcile.Runner(
                name="volume",
                reconcile=self.volume_controller.reconcile,
                keys=self.volume_controller.names,
                clock=clock,
                resync_interval=resync_interval,
            ),
        ]
        self.service_controller = services.ServiceController(store=store, clock=clock)
        # LoadBalancer IPs: woken only by writes of LB records (see changed()), resynced as a safety net.
        self.service_runner = reconcile.Runner(
            name="service",
            reconcile=self.service_controller.reconcile,
            keys=self.service_controller.names,
            clock=clock,
            resync_interval=max(resync_interval, 10.0),
        )
        self.runners.append(self.service_runner)
        self.metrics = metrics.ManagerMetrics(store=store, runners=self.runners)
        self.context = context_mod.Context(
            store=store, clock=clock, token=token, on_change=self.changed, metrics=self.metrics.render
        )
        self._tasks: list[asyncio.Task[None]] = []

    def changed(self, kind: str) -> None:
        """The API or an agent wrote something: let every controller look again now."""
        for runner in self.runners:
            if runner is self.service_runner and kind not in services.WAKE_KINDS:
                continue  # agent heartbeats arrive every second; the LB pass lists every service
            runner.wake()

    def start(self) -> None:
        for runner in self.runners:
            self._tasks.append(asyncio.create_task(runner.run(), name=f"controller-{runner.name}"))
        log.info("controllers started %s", logs.kv(controllers=",".join(r.name for r in self.runners)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
