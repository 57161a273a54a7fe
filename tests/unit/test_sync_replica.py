"""Replica side of a rebuild (replica/sync.py) and the FILE_* payloads (wire/filesync.py)."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalhorn.common import errors
from metalhorn.storage.chain import meta
from metalhorn.storage.replica import files, sync
from metalhorn.storage.replica.server import ReplicaServer
from metalhorn.storage.replica.store import ReplicaStore
from metalhorn.storage.wire import client as wire_client
from metalhorn.storage.wire import codec, filesync

SIZE = 8 << 20
BS = 4096


def make_file(path: pathlib.Path, writes: list[tuple[int, bytes]]) -> str:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, SIZE)
        for at, data in writes:
            files.pwrite_all(fd, data, at)
    finally:
        os.close(fd)
    return str(path)


def test_a_hole_and_allocated_zeros_have_different_digests(tmp_path: pathlib.Path) -> None:
    hole = make_file(tmp_path / "hole", [(0, b"x" * BS)])
    zeros = make_file(tmp_path / "zeros", [(0, b"x" * BS), (BS, bytes(BS))])
    same = make_file(tmp_path / "same", [(0, b"x" * BS)])
    empty = make_file(tmp_path / "empty", [])
    a = filesync.split_digests(sync._checksum_range(hole, 0, SIZE))
    b = filesync.split_digests(sync._checksum_range(zeros, 0, SIZE))
    c = filesync.split_digests(sync._checksum_range(same, 0, SIZE))
    d = filesync.split_digests(sync._checksum_range(empty, 0, SIZE))
    assert len(a) == SIZE // filesync.SYNC_BLOCK
    assert a[0] != b[0] and a[1:] == b[1:] == [filesync.EMPTY] * 3
    assert a == c
    assert d == [filesync.EMPTY] * 4


def test_read_then_write_reproduces_data_and_holes(tmp_path: pathlib.Path) -> None:
    src = make_file(tmp_path / "src", [(0, b"a" * BS), (3 * BS, bytes(2 * BS)), (10 * BS, b"b" * 100)])
    dst = make_file(tmp_path / "dst", [(BS, b"old" * 1000), (20 * BS, b"z" * BS)])
    body = sync._read_range(src, 0, 4 << 20)
    assert filesync.data_bytes(body) == 4 * BS
    sync._write_range(dst, 0, 4 << 20, memoryview(body))
    for path in (src, dst):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert files.data_extents(fd, limit=SIZE) == [(0, BS), (3 * BS, 2 * BS), (10 * BS, BS)]
        finally:
            os.close(fd)
    assert sync._checksum_range(src, 0, SIZE) == sync._checksum_range(dst, 0, SIZE)


@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 5000)), max_size=6),
)
def test_extents_body_round_trip(raw: list[tuple[int, int]]) -> None:
    extents = []
    pos = 0
    for gap, length in raw:
        extents.append((pos + gap, length))
        pos += gap + length
    data = [bytes([i % 251]) * n for i, (_at, n) in enumerate(extents)]
    body = filesync.body_header(extents) + b"".join(data)
    decoded, payload = filesync.decode_body(body, range_length=max(pos, 1))
    assert decoded == extents and bytes(payload) == b"".join(data)
    name, rest = filesync.split_write_payload(filesync.write_payload("volume-snap-x.img", body))
    assert name == "volume-snap-x.img" and bytes(rest) == body


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\x00\x00\x02", filesync.body_header([(0, 10)]) + b"short", filesync.body_header([(5, 10), (0, 1)])],
    ids=["empty", "truncated", "short-data", "unordered"],
)
def test_bad_extents_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(errors.InvalidArgument):
        filesync.decode_body(body, range_length=1 << 20)


def test_file_names_cannot_escape_the_directory() -> None:
    for bad in (b"../x", b"", b"a/b", b"\xff"):
        with pytest.raises(errors.InvalidArgument):
            filesync.decode_name(bad)


async def test_file_frames_refuse_the_head_and_writes_outside_a_rebuild(tmp_path: pathlib.Path) -> None:
    store = ReplicaStore.open(tmp_path / "r", size=SIZE)
    store.write(0, b"q" * BS)
    store.snapshot("s1")
    store.close()  # a clean shutdown: Dirty=false, so the server does not report it unclean
    store = ReplicaStore.open(tmp_path / "r")
    server = ReplicaServer(store)
    address = await server.start(f"unix:{tmp_path / 'r.sock'}")
    client = await wire_client.ReplicaClient.connect(address, timeout=5)
    try:
        snap = meta.snapshot_file("s1")
        reply = await client._future(int(codec.FrameType.FILE_READ), 0, 0, BS, snap.encode())
        assert filesync.data_bytes(reply.payload) == BS
        with pytest.raises(errors.NotFound):
            await client._future(int(codec.FrameType.FILE_READ), 0, 0, BS, store.head.encode())
        with pytest.raises(errors.InvalidArgument):
            payload = filesync.write_payload(snap, filesync.body_header([]))
            await client._future(int(codec.FrameType.FILE_WRITE), 0, 0, BS, payload)
        with pytest.raises(errors.OutOfRange):
            await client._future(int(codec.FrameType.FILE_CHECKSUM), 0, 1, BS, snap.encode())
        info = await client.control({"op": "info"})
        assert info["unclean"] is False
    finally:
        client.close()
        await server.close()
        store.close()


async def test_prepare_reuses_the_old_head_and_marks_rebuilding(tmp_path: pathlib.Path) -> None:
    store = ReplicaStore.open(tmp_path / "r", size=SIZE)
    store.write(0, b"h" * BS)
    old_head = store.head
    server = ReplicaServer(store)
    try:
        layers = [{"name": "volume-snap-a.img", "parent": "", "created": "2024-01-01T00:00:00Z"},
                  {"name": "volume-snap-b.img", "parent": "volume-snap-a.img", "user_created": False}]  # fmt: skip
        snap_map = bytes(SIZE // BS)
        import base64
        import zlib

        result = server.sync.control(
            {"op": "sync_prepare", "size": SIZE, "chain": layers, "head": "volume-head-007.img",
             "map": base64.b64encode(zlib.compress(snap_map)).decode()}
        )  # fmt: skip
        assert result["created"] == ["volume-snap-a.img"] and result["reused"] == ["volume-snap-b.img"]
        assert store.chain == ["volume-snap-a.img", "volume-snap-b.img", "volume-head-007.img"]
        assert old_head not in os.listdir(tmp_path / "r")
        assert store.info()["rebuilding"] is True
        reopened = meta.VolumeMeta.from_json((tmp_path / "r" / meta.VOLUME_META).read_bytes())
        assert reopened.rebuilding and reopened.head == "volume-head-007.img"
        store.write(0, b"n" * BS)  # the data path works on the new head
        assert store.read(0, BS) == b"n" * BS
        server.sync.control({"op": "sync_finish", "revision": 42})
        assert store.revision == 42 and not store.info()["rebuilding"]
    finally:
        await server.close()
        store.close()
    again = ReplicaStore.open(tmp_path / "r")
    try:
        assert again.revision == 42
        assert again.read(0, BS) == b"n" * BS
        assert again.chain[-1] == "volume-head-007.img"
    finally:
        again.close()


async def test_prepare_that_hits_a_full_disk_can_be_retried(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepare that fails after closing the old layout (ENOSPC writing volume.meta) must not poison retries."""
    import base64
    import errno
    import zlib

    store = ReplicaStore.open(tmp_path / "r", size=SIZE)
    store.write(0, b"h" * BS)
    server = ReplicaServer(store)
    request = {
        "op": "sync_prepare",
        "size": SIZE,
        "chain": [{"name": "volume-snap-a.img", "parent": "", "created": "2024-01-01T00:00:00Z"}],
        "head": "volume-head-009.img",
        "map": base64.b64encode(zlib.compress(bytes(SIZE // BS))).decode(),
    }
    real_atomic_write = files.atomic_write
    calls = {"n": 0}

    def full_once(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise errors.from_oserror(OSError(errno.ENOSPC, "No space left on device"), "writing volume.meta")
        real_atomic_write(*args, **kwargs)  # type: ignore[arg-type]

    try:
        monkeypatch.setattr(sync.files, "atomic_write", full_once)
        with pytest.raises(errors.NoSpace):
            server.sync.control(request)
        result = server.sync.control(request)  # space is back: the retry goes through
        assert store.chain == ["volume-snap-a.img", "volume-head-009.img"]
        assert result["head"] == "volume-head-009.img"
        store.write(0, b"n" * BS)
        assert store.read(0, BS) == b"n" * BS
    finally:
        await server.close()
        store.close()
