"""The Manager wiring: controllers run as tasks and converge, /metrics reflects the store and the runners."""

from __future__ import annotations

import asyncio

from metalhorn.common import clock as clock_mod
from metalhorn.control import manager as manager_mod
from metalhorn.control.controllers import agentsync
from metalhorn.control.store import record as record_mod
from metalhorn.testing import store as store_kit


async def test_manager_runs_controllers_until_stopped_and_exports_metrics() -> None:
    clock = clock_mod.SystemClock()
    store = store_kit.MemoryStore(clock=clock)
    manager = manager_mod.Manager(store=store, clock=clock, token="t", resync_interval=0.05)
    report = {"address": "198.18.0.1", "disks": {"/d": {"capacity": 1 << 40, "available": 1 << 40}}}
    agentsync.sync(store, node="n1", report=report, clock=clock)
    store.create(record_mod.Record(kind="volume", name="v1", spec={"size": 1 << 30, "replicas": 1, "attach_node": ""}))
    manager.start()
    try:
        for _ in range(200):
            if store.list("replica"):
                break
            await asyncio.sleep(0.01)
    finally:
        await manager.stop()
    assert [r.spec["node"] for r in store.list("replica")] == ["n1"]
    text = manager.metrics.render()
    assert 'metalhorn_node_ready{node="n1"} 1' in text
    assert 'metalhorn_volume_robustness{volume="v1",robustness=' in text
    assert "# TYPE metalhorn_controller_reconcile_total counter" in text
    assert 'metalhorn_controller_reconcile_total{controller="volume",result="success"}' in text
