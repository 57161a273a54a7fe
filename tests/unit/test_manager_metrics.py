"""The manager's /metrics: exact series for volumes, replica modes, rebuild and expansion progress, node
readiness, disks and controller results/errors."""

from __future__ import annotations

from metalhorn.control import metrics, reconcile
from metalhorn.control.store import record as record_mod
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit

GiB = 1 << 30


def series(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def test_exact_series() -> None:
    clock = fake_clock.FakeClock()
    store = store_kit.MemoryStore(clock=clock)
    replicas = [
        {"name": "v1-r1", "node": "n1", "mode": "RW", "address": "tcp://198.18.0.1:1"},
        {"name": "v1-r2", "node": "n2", "mode": "WO", "address": "tcp://198.18.0.2:1"},
        {"name": "v1-r3", "node": "n3", "mode": "ERR", "address": ""},
    ]
    store.create(
        record_mod.Record(
            kind="volume",
            name="v1",
            spec={"size": GiB},
            status={
                "state": "attached",
                "robustness": "degraded",
                "replicas": replicas,
                "rebuild": {"replica": "tcp://198.18.0.2:1", "done": GiB // 4, "total": GiB},
            },
        )
    )
    store.create(
        record_mod.Record(
            kind="volume",
            name="v2",
            spec={"size": 2 * GiB},
            status={
                "state": "detached",
                "robustness": "healthy",
                "expansion": {"size": 2 * GiB, "done": 1, "total": 2},
            },
        )
    )
    store.create(
        record_mod.Record(
            kind="node", name="n1", status={"ready": True, "disks": {"/d": {"capacity": 100, "available": 60}}}
        )
    )
    store.create(record_mod.Record(kind="node", name="n2", status={"ready": False}))

    def fails(_key: str) -> reconcile.Result:
        raise RuntimeError("boom")

    runner = reconcile.Runner(name="volume", reconcile=fails, keys=lambda: ["v1"], clock=clock)
    runner.run_due()
    exported = metrics.ManagerMetrics(store=store, runners=[runner])

    assert series(exported.render()) == {
        'metalhorn_volumes{state="attached",robustness="degraded"}': "1",
        'metalhorn_volumes{state="detached",robustness="healthy"}': "1",
        'metalhorn_volume_robustness{volume="v1",robustness="degraded"}': "1",
        'metalhorn_volume_robustness{volume="v2",robustness="healthy"}': "1",
        'metalhorn_replica_mode{volume="v1",replica="v1-r1",node="n1",mode="RW"}': "1",
        'metalhorn_replica_mode{volume="v1",replica="v1-r2",node="n2",mode="WO"}': "1",
        'metalhorn_replica_mode{volume="v1",replica="v1-r3",node="n3",mode="ERR"}': "1",
        'metalhorn_volume_rebuild_progress{volume="v1"}': "0.25",
        'metalhorn_volume_expansion_progress{volume="v2"}': "0.5",
        'metalhorn_node_ready{node="n1"}': "1",
        'metalhorn_node_ready{node="n2"}': "0",
        'metalhorn_disk_bytes{node="n1",disk="/d",kind="available"}': "60",
        'metalhorn_disk_bytes{node="n1",disk="/d",kind="capacity"}': "100",
        'metalhorn_disk_bytes{node="n1",disk="/d",kind="scheduled"}': "0",
        'metalhorn_controller_reconcile_total{controller="volume",result="fatal"}': "0",
        'metalhorn_controller_reconcile_total{controller="volume",result="retry"}': "0",
        'metalhorn_controller_reconcile_total{controller="volume",result="success"}': "0",
        'metalhorn_controller_errors_total{controller="volume",code="INTERNAL"}': "1",
    }


def test_a_deleted_volume_stops_being_exported() -> None:
    clock = fake_clock.FakeClock()
    store = store_kit.MemoryStore(clock=clock)
    store.create(record_mod.Record(kind="volume", name="v1", status={"state": "detached", "robustness": "healthy"}))
    exported = metrics.ManagerMetrics(store=store, runners=[])
    assert 'volume="v1"' in exported.render()
    store.delete("volume", "v1")
    assert 'volume="v1"' not in exported.render()
