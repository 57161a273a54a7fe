"""An instance the agent does not report is not running: its stale "running" status must not survive."""

from __future__ import annotations

from metalhorn.control.controllers import agentsync
from metalhorn.control.store import record as record_mod
from metalhorn.testing.clock import FakeClock
from metalhorn.testing.store import MemoryStore


def test_unreported_engine_is_no_longer_running() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.create(record_mod.Record(kind="node", name="n1", spec={}, status={}))
    engine = store.create(
        record_mod.Record(
            kind="engine",
            name="v1-e",
            spec={"volume": "v1", "node": "n1", "replicas": [], "desired": "running"},
            status={"state": "running", "endpoint": "nbd://198.18.0.1:10809/v1", "pid": 42},
        )
    )
    agentsync.sync(store, node="n1", report={"address": "198.18.0.1", "replicas": {}, "engines": {}}, clock=clock)
    after = store.get("engine", engine.name)
    assert after.status["state"] == "pending"
    assert after.status["pid"] is None
