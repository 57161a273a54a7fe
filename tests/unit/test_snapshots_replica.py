"""ReplicaHistory on a temporary replica: remove, purge (fold into a snapshot and into the head), revert, expand,
checksums and verify. The worker-thread ops are called directly (record_checksum/verify), not through a loop."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest

from metalhorn.common import errors
from metalhorn.storage.chain import meta
from metalhorn.storage.replica import snapshots
from metalhorn.storage.replica.store import ReplicaStore

MiB = 1 << 20
SIZE = 8 * MiB


def fill(seed: int, n: int) -> bytes:
    return bytes([seed]) * n


@pytest.fixture
def history(tmp_path: pathlib.Path) -> Any:
    store = ReplicaStore.open(tmp_path / "r", size=SIZE)
    h = snapshots.ReplicaHistory(store)
    h._hash_later = lambda disk: None  # type: ignore[method-assign]  # no event loop here
    yield h
    store.close()


def fold_all(h: snapshots.ReplicaHistory, budget: int = 64 * 1024) -> list[str]:
    """Run the purge loop the engine runs, with a small budget so it takes many steps."""
    purged = []
    for _ in range(100):
        plan = h.handle({"op": "snap.purge_next"})
        assert isinstance(plan, dict)
        if plan["snapshot"] is None:
            return purged
        start = 0
        for _step in range(10_000):
            step = h.handle({"op": "snap.fold", **plan, "start": start, "budget": budget})
            assert isinstance(step, dict)
            start = step["next"]
            if start < 0:
                break
        h.handle({"op": "snap.fold_commit", **plan})
        purged.append(plan["snapshot"])
    raise AssertionError("purge did not finish")


def test_remove_marks_and_purge_folds_into_snapshot_child(history: snapshots.ReplicaHistory) -> None:
    store = history.store
    store.write(0, fill(1, 2 * MiB))  # a: blocks 0-2MiB
    history.handle({"op": "snap.create", "name": "a"})
    store.write(MiB, fill(2, 2 * MiB))  # b overrides half of a, adds more
    history.handle({"op": "snap.create", "name": "b"})
    store.write(0, fill(3, 4096))  # head
    before = store.read(0, SIZE)
    history.handle({"op": "snap.remove", "name": "a"})
    assert store.disks["volume-snap-a.img"].removed
    assert fold_all(history) == ["volume-snap-a.img"]
    assert store.chain == ["volume-snap-b.img", store.head]
    assert store.read(0, SIZE) == before
    assert not os.path.exists(os.path.join(store.directory, "volume-snap-a.img"))
    # b now holds a's blocks that b did not overwrite: its own view is unchanged.
    fd = os.open(os.path.join(store.directory, "volume-snap-b.img"), os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, 0) == fill(1, MiB)
        assert os.pread(fd, MiB, MiB) == fill(2, MiB)
    finally:
        os.close(fd)


def test_purge_into_head_keeps_head_writes(history: snapshots.ReplicaHistory) -> None:
    store = history.store
    store.write(0, fill(1, 4 * MiB))
    history.handle({"op": "snap.create", "name": "a"})
    store.write(MiB, fill(2, MiB))
    history.handle({"op": "snap.remove", "name": "a"})
    plan = history.handle({"op": "snap.purge_next"})
    assert plan == {"snapshot": "volume-snap-a.img", "child": store.head}
    # interleave head writes with fold steps, as I/O does during an online purge
    start = 0
    seed = 10
    for _ in range(1000):
        step = history.handle({"op": "snap.fold", **plan, "start": start, "budget": 256 * 1024})
        assert isinstance(step, dict)
        store.write(3 * MiB + seed * 4096, fill(seed, 4096))
        seed += 1
        start = step["next"]
        if start < 0:
            break
    expected = store.read(0, SIZE)
    history.handle({"op": "snap.fold_commit", **plan})
    assert store.chain == [store.head]
    assert store.read(0, SIZE) == expected
    assert store.read(MiB, MiB) == fill(2, MiB)
    assert store.read(3 * MiB + 10 * 4096, 4096) == fill(10, 4096)
    store.close()
    reopened = ReplicaStore.open(store.directory)
    try:
        assert reopened.read(0, SIZE) == expected
    finally:
        reopened.close()


def test_head_and_branch_points_are_not_removed_or_folded(history: snapshots.ReplicaHistory) -> None:
    store = history.store
    with pytest.raises(errors.InvalidArgument):
        history.handle({"op": "snap.remove", "name": store.head})
    with pytest.raises(errors.NotFound):
        history.handle({"op": "snap.remove", "name": "nope"})
    store.write(0, fill(1, 4096))
    history.handle({"op": "snap.create", "name": "a"})
    store.write(0, fill(2, 4096))
    history.handle({"op": "snap.create", "name": "b"})
    snapshots.revert(store, "volume-snap-a.img")  # a now has two children: b and the new head
    assert store.read(0, 4096) == fill(1, 4096)
    history.handle({"op": "snap.remove", "name": "a"})
    assert history.handle({"op": "snap.purge_next"}) == {"snapshot": None, "child": ""}
    history.handle({"op": "snap.remove", "name": "b"})  # an off-chain leaf: deleted outright
    # b goes first; then a has one child (the head) and folds into it
    assert fold_all(history) == ["volume-snap-b.img", "volume-snap-a.img"]
    assert store.chain == [store.head]
    assert store.read(0, 4096) == fill(1, 4096)


def test_tree_lists_branch_after_revert(history: snapshots.ReplicaHistory) -> None:
    store = history.store
    history.handle({"op": "snap.create", "name": "a", "labels": {"k": "v"}, "created": "2024-01-01T00:00:00Z"})
    history.handle({"op": "snap.create", "name": "b", "created": "2024-01-02T00:00:00Z"})
    snapshots.revert(store, "volume-snap-a.img")
    listing = history.handle({"op": "snap.list"})
    assert isinstance(listing, dict)
    by_name = {e["name"]: e for e in listing["snapshots"]}
    assert by_name["a"]["children"] == sorted(["b", store.head])
    assert by_name["a"]["labels"] == {"k": "v"}
    assert by_name["b"]["in_chain"] is False
    assert by_name[store.head]["head"] is True


def test_expand_grows_and_refuses_shrink(history: snapshots.ReplicaHistory) -> None:
    store = history.store
    store.write(0, fill(7, 4096))
    history.handle({"op": "snap.create", "name": "a"})
    with pytest.raises(errors.InvalidArgument, match="shrink"):
        history.handle({"op": "snap.expand", "size": SIZE // 2})
    history.handle({"op": "snap.expand", "size": 2 * SIZE})
    assert store.size == 2 * SIZE
    assert store.read(SIZE, 4096) == bytes(4096)
    store.write(2 * SIZE - 4096, fill(9, 4096))
    assert store.read(0, 4096) == fill(7, 4096)
    assert meta.VolumeMeta.from_json((pathlib.Path(store.directory) / "volume.meta").read_bytes()).size == 2 * SIZE


def test_verify_detects_a_changed_snapshot_file(history: snapshots.ReplicaHistory) -> None:
    store = history.store
    store.write(0, fill(1, 3 * MiB))
    history.handle({"op": "snap.create", "name": "a"})
    assert history.record_checksum("volume-snap-a.img")
    report = history.verify()["files"]["volume-snap-a.img"]
    assert report["ok"] and report["recorded"] == report["checksum"]
    with open(os.path.join(store.directory, "volume-snap-a.img"), "r+b") as f:
        f.seek(2 * MiB + 5)
        f.write(b"evil")
    report = history.verify()["files"]["volume-snap-a.img"]
    assert not report["ok"]
    assert report["bad_blocks"] == [1]


def test_snapshot_limit(history: snapshots.ReplicaHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "MAX_SNAPSHOTS", 2)
    history.handle({"op": "snap.create", "name": "a"})
    history.handle({"op": "snap.create", "name": "b"})
    with pytest.raises(errors.NotSupported, match="at most 2"):
        history.handle({"op": "snap.create", "name": "c"})
