"""ReplicaStore on a temporary directory: data semantics through the chain, metadata safety, reopen."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from metalhorn.common import errors
from metalhorn.storage.chain import meta
from metalhorn.storage.replica import files
from metalhorn.storage.replica.store import ReplicaStore

MiB = 1 << 20
BS = 4096
SIZE = 4 * MiB


@pytest.fixture
def store(tmp_path: pathlib.Path) -> ReplicaStore:
    s = ReplicaStore.open(tmp_path / "r", size=SIZE)
    yield s  # type: ignore[misc]
    s.close()


def pattern(n: int, seed: int) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n)) if n < 64 else (bytes(range(seed, seed + 64)) * n)[:n]


def allocated(path: pathlib.Path) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return files.data_extents(fd, limit=os.fstat(fd).st_size)
    finally:
        os.close(fd)


def test_new_replica_layout(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "r"
    ReplicaStore.open(d, size=SIZE).close()
    assert sorted(os.listdir(d)) == [
        "revision.counter",
        "volume-head-000.img",
        "volume-head-000.img.meta",
        "volume.meta",
    ]
    vm = json.loads((d / "volume.meta").read_bytes())
    assert vm == {
        "Size": SIZE,
        "Head": "volume-head-000.img",
        "Dirty": False,
        "Rebuilding": False,
        "Error": "",
        "Parent": "",
        "SectorSize": 512,
        "BackingFilePath": "",
    }
    assert (d / "volume-head-000.img").stat().st_size == SIZE
    assert allocated(d / "volume-head-000.img") == []
    assert (d / "revision.counter").read_bytes() == b"0" + bytes(4095)
    disk = json.loads((d / "volume-head-000.img.meta").read_bytes())
    assert disk["Name"] == "volume-head-000.img" and disk["Parent"] == "" and disk["Labels"] is None


def test_fresh_reads_zero(store: ReplicaStore) -> None:
    assert store.read(0, MiB) == bytes(MiB)
    assert store.read(SIZE - 1, 1) == b"\x00"


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, BS), (0, MiB), (1, 10), (BS - 3, 7), (5 * BS + 100, 3 * BS), (SIZE - BS, BS), (SIZE - 5, 5), (123, 0)],
)
def test_write_read_back(store: ReplicaStore, offset: int, length: int) -> None:
    data = pattern(length, offset & 0x7F)
    store.write(offset, data)
    assert store.read(offset, length) == data
    # Neighbours stay zero.
    if offset >= 16:
        assert store.read(offset - 16, 16) == bytes(16)
    if offset + length + 16 <= SIZE:
        assert store.read(offset + length, 16) == bytes(16)


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (SIZE, 1), (SIZE - 1, 2)])
def test_out_of_range(store: ReplicaStore, offset: int, length: int) -> None:
    with pytest.raises(errors.OutOfRange):
        store.read(offset, length)
    with pytest.raises(errors.OutOfRange):
        store.write(offset, b"x" * length)


def test_unaligned_write_over_snapshot_keeps_rest_of_block(store: ReplicaStore) -> None:
    old = pattern(2 * BS, 1)
    store.write(0, old)
    store.snapshot("s1")
    store.write(BS - 2, b"NEW!")  # straddles blocks 0 and 1, both only in the snapshot
    expected = bytearray(old)
    expected[BS - 2 : BS + 2] = b"NEW!"
    assert store.read(0, 2 * BS) == bytes(expected)


def test_zeros_in_newer_layer_hide_older_data(store: ReplicaStore) -> None:
    store.write(0, b"\xaa" * (4 * BS))
    store.snapshot("s1")
    store.write_zeroes(0, 4 * BS)  # holes allowed, but a snapshot holds the blocks: allocated zeros
    assert store.read(0, 4 * BS) == bytes(4 * BS)
    head = pathlib.Path(store.directory) / store.head
    assert allocated(head) == [(0, 4 * BS)]


def test_trim_never_resurrects_snapshot_data(store: ReplicaStore) -> None:
    store.write(0, b"\x11" * (2 * BS))
    store.snapshot("s1")
    store.write(0, b"\x22" * (4 * BS))
    store.unmap(0, 4 * BS)
    # Blocks 0-1: a snapshot holds them, so the head keeps its data (trim is advisory).
    assert store.read(0, 2 * BS) == b"\x22" * (2 * BS)
    # Blocks 2-3: nothing below, so they were punched and read as zeros.
    assert store.read(2 * BS, 2 * BS) == bytes(2 * BS)
    assert allocated(pathlib.Path(store.directory) / store.head) == [(0, 2 * BS)]


def test_write_zeroes_punches_where_nothing_below(store: ReplicaStore) -> None:
    store.write(0, b"\x33" * (8 * BS))
    store.write_zeroes(BS, 4 * BS)
    assert store.read(0, 8 * BS) == b"\x33" * BS + bytes(4 * BS) + b"\x33" * (3 * BS)
    assert allocated(pathlib.Path(store.directory) / store.head) == [(0, BS), (5 * BS, 3 * BS)]


def test_write_zeroes_no_hole_allocates(store: ReplicaStore) -> None:
    store.write_zeroes(0, 2 * BS, no_hole=True)
    assert allocated(pathlib.Path(store.directory) / store.head) == [(0, 2 * BS)]


def test_write_zeroes_unaligned_edges(store: ReplicaStore) -> None:
    store.write(0, b"\x44" * (3 * BS))
    store.snapshot("s")
    store.write_zeroes(100, 2 * BS)
    assert store.read(0, 3 * BS) == b"\x44" * 100 + bytes(2 * BS) + b"\x44" * (BS - 100)


def test_unmap_partial_blocks_is_a_no_op(store: ReplicaStore) -> None:
    store.write(0, b"\x55" * BS)
    store.unmap(10, 100)
    assert store.read(0, BS) == b"\x55" * BS


def test_revision_counts_modifications(store: ReplicaStore) -> None:
    store.write(0, b"x")
    store.write(BS, b"y")
    store.unmap(0, BS)
    assert store.revision == 3
    assert store.persist_revision() is True
    assert store.persist_revision() is False
    counter = pathlib.Path(store.directory) / "revision.counter"
    assert meta.decode_revision(counter.read_bytes()) == 3


def test_dirty_while_written_clean_after_close(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "r"
    s = ReplicaStore.open(d, size=SIZE)
    assert json.loads((d / "volume.meta").read_bytes())["Dirty"] is False
    s.write(0, b"x")
    assert json.loads((d / "volume.meta").read_bytes())["Dirty"] is True
    s.close()
    assert json.loads((d / "volume.meta").read_bytes())["Dirty"] is False
    assert meta.decode_revision((d / "revision.counter").read_bytes()) == 1


def test_snapshot_files_and_metadata(store: ReplicaStore) -> None:
    store.write(0, b"a" * BS)
    snap = store.snapshot("s1", user_created=True, labels={"k": "v"}, created="2024-01-01T00:00:00Z")
    assert snap == "volume-snap-s1.img"
    d = pathlib.Path(store.directory)
    assert sorted(p.name for p in d.iterdir()) == [
        "revision.counter",
        "volume-head-001.img",
        "volume-head-001.img.meta",
        "volume-snap-s1.img",
        "volume-snap-s1.img.meta",
        "volume.meta",
    ]
    vm = json.loads((d / "volume.meta").read_bytes())
    assert (vm["Head"], vm["Parent"]) == ("volume-head-001.img", "volume-snap-s1.img")
    sm = json.loads((d / "volume-snap-s1.img.meta").read_bytes())
    assert sm == {
        "Name": "volume-snap-s1.img",
        "Parent": "",
        "Removed": False,
        "UserCreated": True,
        "Created": "2024-01-01T00:00:00Z",
        "Labels": {"k": "v"},
    }
    assert json.loads((d / "volume-head-001.img.meta").read_bytes())["Parent"] == "volume-snap-s1.img"
    assert store.chain == ["volume-snap-s1.img", "volume-head-001.img"]
    with pytest.raises(errors.AlreadyExists):
        store.snapshot("s1")
    info = store.info()
    assert info["chain"] == store.chain
    assert [c["name"] for c in info["layers"]] == store.chain
    assert info["layers"][0]["allocated"] >= BS and info["layers"][1]["allocated"] == 0
    assert (info["size"], info["revision"], info["head"]) == (SIZE, 1, "volume-head-001.img")


def test_reopen_rebuilds_map_from_seek_data(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "r"
    s = ReplicaStore.open(d, size=SIZE)
    s.write(0, b"\x01" * (4 * BS))
    s.snapshot("a")
    s.write(BS, b"\x02" * BS)
    s.write_zeroes(2 * BS, BS)  # allocated zeros over snapshot data
    s.snapshot("b")
    s.write(3 * BS, b"\x03" * 10)
    s.write(MiB, b"\x04" * BS)
    before = s.read(0, 2 * MiB)
    digest = s.checksum()
    s.close()
    s2 = ReplicaStore.open(d)
    try:
        assert s2.chain == ["volume-snap-a.img", "volume-snap-b.img", "volume-head-002.img"]
        assert s2.read(0, 2 * MiB) == before
        assert s2.read(2 * BS, BS) == bytes(BS)
        assert s2.read(3 * BS, 12) == b"\x03" * 10 + b"\x01" * 2
        assert s2.checksum() == digest
        assert s2.revision == 5
    finally:
        s2.close()


def test_size_mismatch_refused(tmp_path: pathlib.Path) -> None:
    ReplicaStore.open(tmp_path / "r", size=SIZE).close()
    with pytest.raises(errors.InvalidArgument, match="--size"):
        ReplicaStore.open(tmp_path / "r", size=2 * SIZE)


def test_new_replica_needs_size(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="--size"):
        ReplicaStore.open(tmp_path / "r")


def test_second_open_is_refused(store: ReplicaStore) -> None:
    with pytest.raises(errors.Conflict):
        ReplicaStore.open(store.directory)


def _damage(d: pathlib.Path, what: str) -> str:
    """Damage one file of a replica with one snapshot; return the file name the error must mention."""
    if what == "volume.meta-missing":
        (d / "volume.meta").unlink()
        return "volume.meta"
    if what == "volume.meta-garbage":
        (d / "volume.meta").write_bytes(b"\x00garbage")
        return "volume.meta"
    if what == "volume.meta-truncated":
        (d / "volume.meta").write_bytes((d / "volume.meta").read_bytes()[:20])
        return "volume.meta"
    if what == "head-meta-missing":
        (d / "volume-head-001.img.meta").unlink()
        return "volume-head-001.img.meta"
    if what == "snap-meta-garbage":
        (d / "volume-snap-s.img.meta").write_bytes(b"{nope")
        return "volume-snap-s.img.meta"
    if what == "revision-missing":
        (d / "revision.counter").unlink()
        return "revision.counter"
    if what == "revision-garbage":
        (d / "revision.counter").write_bytes(b"abc")
        return "revision.counter"
    if what == "snap-file-missing":
        (d / "volume-snap-s.img").unlink()
        return "volume-snap-s.img"
    if what == "head-file-missing":
        (d / "volume-head-001.img").unlink()
        return "volume-head-001.img"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    [
        "volume.meta-missing",
        "volume.meta-garbage",
        "volume.meta-truncated",
        "head-meta-missing",
        "snap-meta-garbage",
        "revision-missing",
        "revision-garbage",
        "snap-file-missing",
        "head-file-missing",
    ],
)
def test_corrupt_or_missing_metadata_refused_never_reinitialised(tmp_path: pathlib.Path, what: str) -> None:
    d = tmp_path / "r"
    s = ReplicaStore.open(d, size=SIZE)
    s.write(0, b"keep")
    s.snapshot("s")
    s.close()
    name = _damage(d, what)
    listing = sorted(os.listdir(d))
    with pytest.raises(errors.CorruptMetadata, match=name.replace(".", r"\.")):
        ReplicaStore.open(d, size=SIZE)
    assert sorted(os.listdir(d)) == listing  # nothing re-created or removed


def test_readonly_open_changes_nothing(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "r"
    s = ReplicaStore.open(d, size=SIZE)
    s.write(0, b"abc")
    s.close()
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.name.endswith("meta") or p.name.endswith("counter")}
    ro = ReplicaStore.open(d, readonly=True)
    assert ro.read(0, 3) == b"abc"
    with pytest.raises(errors.NotSupported):
        ro.write(0, b"x")
    ro.close()
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.name.endswith("meta") or p.name.endswith("counter")}
    assert before == after


class StoreModel(RuleBasedStateMachine):
    """Random writes/unmaps/zeroes/snapshots/reopens against a bytearray model of the volume."""

    SIZE = 16 * BS

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="mh-store-")
        self.dir = os.path.join(self.tmp, "r")
        self.store = ReplicaStore.open(self.dir, size=self.SIZE)
        self.model = bytearray(self.SIZE)
        self.snaps = 0

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    ranges = st.tuples(st.integers(0, SIZE - 1), st.integers(1, 6 * BS)) | st.tuples(
        st.integers(0, 15).map(lambda b: b * BS), st.integers(1, 6).map(lambda n: n * BS)
    )

    def _clip(self, r: tuple[int, int]) -> tuple[int, int]:
        offset, length = r
        return offset, min(length, self.SIZE - offset)

    @rule(r=ranges, seed=st.integers(1, 255))
    def write(self, r: tuple[int, int], seed: int) -> None:
        offset, length = self._clip(r)
        data = bytes([seed]) * length
        self.store.write(offset, data)
        self.model[offset : offset + length] = data

    @rule(r=ranges)
    def unmap(self, r: tuple[int, int]) -> None:
        offset, length = self._clip(r)
        before = self.store.read(offset, length)
        self.store.unmap(offset, length)
        after = self.store.read(offset, length)
        # Advisory: each block reads as before or as zeros, never as older data.
        block_starts = range(offset - offset % BS, offset + length, BS)
        for start in block_starts:
            lo, hi = max(start, offset) - offset, min(start + BS, offset + length) - offset
            assert after[lo:hi] in (before[lo:hi], bytes(hi - lo))
        self.model[offset : offset + length] = after

    @rule(r=ranges, no_hole=st.booleans())
    def write_zeroes(self, r: tuple[int, int], no_hole: bool) -> None:
        offset, length = self._clip(r)
        self.store.write_zeroes(offset, length, no_hole=no_hole)
        self.model[offset : offset + length] = bytes(length)

    @rule()
    def snapshot(self) -> None:
        if self.snaps < 6:
            self.snaps += 1
            self.store.snapshot(f"s{self.snaps}")

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = ReplicaStore.open(self.dir, size=self.SIZE)

    @rule(r=ranges)
    def read(self, r: tuple[int, int]) -> None:
        offset, length = self._clip(r)
        assert self.store.read(offset, length) == self.model[offset : offset + length]

    @invariant()
    def whole_volume(self) -> None:
        assert self.store.read(0, self.SIZE) == self.model


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
