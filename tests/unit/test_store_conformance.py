"""SqliteStore and MemoryStore pass the same conformance check, and SQLite keeps records across reopening."""

from __future__ import annotations

import pathlib
import threading

import pytest

from metalhorn.common import errors
from metalhorn.control.store import base, sqlite
from metalhorn.control.store import record as record_mod
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit


def test_memory_store_conforms() -> None:
    store_kit.check_store(lambda: store_kit.MemoryStore(clock=fake_clock.FakeClock()))


def test_sqlite_store_conforms(tmp_path: pathlib.Path) -> None:
    store_kit.check_store(lambda: sqlite.SqliteStore(tmp_path / "db.sqlite", clock=fake_clock.FakeClock()))


def test_sqlite_store_survives_reopening(tmp_path: pathlib.Path) -> None:
    clock = fake_clock.FakeClock()
    store = base.open_store(f"sqlite://{tmp_path}/db.sqlite", clock=clock)
    store.create(record_mod.Record(kind="volume", name="v1", spec={"size": 1 << 30, "tags": ["ssd"]}))
    store.close()
    again = base.open_store(f"sqlite://{tmp_path}/db.sqlite", clock=clock)
    try:
        rec = again.get("volume", "v1")
        assert rec.spec == {"size": 1 << 30, "tags": ["ssd"]}
        assert rec.resource_version == 1
    finally:
        again.close()


def test_two_sqlite_connections_see_each_others_conflicts(tmp_path: pathlib.Path) -> None:
    clock = fake_clock.FakeClock()
    one = sqlite.SqliteStore(tmp_path / "db", clock=clock)
    two = sqlite.SqliteStore(tmp_path / "db", clock=clock)
    try:
        rec = one.create(record_mod.Record(kind="node", name="n1"))
        two.update(rec.with_(status={"ready": True}))
        with pytest.raises(errors.Conflict):
            one.update(rec.with_(status={"ready": False}))
        assert one.get("node", "n1").status == {"ready": True}
    finally:
        one.close()
        two.close()


def test_sqlite_concurrent_updates_from_threads_never_lose_a_write(tmp_path: pathlib.Path) -> None:
    store = sqlite.SqliteStore(tmp_path / "db", clock=fake_clock.FakeClock())
    store.create(record_mod.Record(kind="setting", name="counter", spec={"n": 0}))

    def bump() -> None:
        for _ in range(20):
            for _attempt in range(1000):
                rec = store.get("setting", "counter")
                try:
                    store.update(rec.with_(spec={"n": rec.spec["n"] + 1}))
                    break
                except errors.Conflict:
                    continue

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert store.get("setting", "counter").spec == {"n": 80}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "error"),
    [("sqlite://", errors.InvalidArgument), ("etcd://h:2379", errors.NotSupported), ("x.db", errors.InvalidArgument)],
)
def test_open_store_refuses_unknown_urls(url: str, error: type[errors.MetalhornError]) -> None:
    with pytest.raises(error):
        base.open_store(url, clock=fake_clock.FakeClock())
