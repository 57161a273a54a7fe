"""Rebuild end to end in one process: real ReplicaServers on temporary directories, the real Engine and Rebuilder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import random
from collections.abc import AsyncIterator

import pytest

from metalhorn.common import errors
from metalhorn.storage.engine import engine as engine_mod
from metalhorn.storage.engine import rebuild
from metalhorn.storage.engine.policy import Mode
from metalhorn.storage.replica import files
from metalhorn.storage.replica.server import ReplicaServer
from metalhorn.storage.replica.store import ReplicaStore

SIZE = 16 << 20
BS = 4096


class Cluster:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.servers: dict[int, ReplicaServer] = {}
        self.paths: dict[int, str] = {}

    async def start(self, index: int) -> str:
        store = ReplicaStore.open(self.root / f"r{index}", size=SIZE)
        server = ReplicaServer(store)
        listen = f"unix:{self.root / f'r{index}.sock'}"
        self.paths[index] = await server.start(listen)
        self.servers[index] = server
        return self.paths[index]

    async def stop(self, index: int) -> None:
        server = self.servers.pop(index)
        await server.close()
        server.store.close()

    async def close(self) -> None:
        for index in list(self.servers):
            await self.stop(index)


@contextlib.asynccontextmanager
async def cluster(tmp_path: pathlib.Path, count: int) -> AsyncIterator[tuple[Cluster, engine_mod.Engine]]:
    nodes = Cluster(tmp_path)
    engine = None
    try:
        addrs = [await nodes.start(i) for i in range(count)]
        engine = await engine_mod.Engine.open(volume="v", size=SIZE, addresses=addrs, timeout=5)
        yield nodes, engine
    finally:
        if engine is not None:
            engine.close()
            await engine.wait_closed()
        await nodes.close()


def layout(store: ReplicaStore) -> list[tuple[str, list[tuple[int, int]], str]]:
    """(file, data extents, content digest) of every snapshot file: what must be equal after a rebuild."""
    import hashlib

    out = []
    for name in store.chain[:-1]:
        fd = os.open(os.path.join(store.directory, name), os.O_RDONLY)
        try:
            ext = files.data_extents(fd, limit=store.size)
            digest = hashlib.sha256(b"".join(os.pread(fd, n, at) for at, n in ext)).hexdigest()
        finally:
            os.close(fd)
        out.append((name, ext, digest))
    return out


async def random_writes(engine: engine_mod.Engine, rng: random.Random, count: int) -> None:
    for _ in range(count):
        block = rng.randrange(SIZE // BS - 4)
        await engine.write(block * BS, rng.randbytes(BS * rng.randint(1, 4)))


async def test_full_rebuild_of_an_empty_replica_under_writes(tmp_path: pathlib.Path) -> None:
    rng = random.Random(1)
    async with cluster(tmp_path, 2) as (nodes, engine):
        await random_writes(engine, rng, 200)
        await engine.write_zeroes(0, 64 * BS, may_trim=False)  # allocated zeros: must arrive allocated
        address = await nodes.start(2)
        rebuilder = rebuild.Rebuilder(engine, timeout=5)
        rebuilder.start(address)
        writes = asyncio.create_task(random_writes(engine, rng, 300))
        progress = await rebuilder.wait(address)
        await writes
        assert progress.state == "done", progress.error
        assert [r.mode for r in engine.replicas] == [Mode.RW, Mode.RW, Mode.RW]
        await engine.flush()
        stores = [nodes.servers[i].store for i in range(3)]
        assert len({s.checksum() for s in stores}) == 1
        assert layout(stores[0]) == layout(stores[2])
        assert stores[0].revision == stores[2].revision
        assert not stores[2].info()["rebuilding"]
        assert progress.transferred > 0 and progress.skipped == 0


async def test_stale_replica_transfers_only_changed_blocks(tmp_path: pathlib.Path) -> None:
    rng = random.Random(2)
    async with cluster(tmp_path, 3) as (nodes, engine):
        for at in range(0, SIZE, 1 << 20):
            await engine.write(at, rng.randbytes(1 << 20))
        await engine.flush()
        address = nodes.paths[2]
        await nodes.stop(2)
        await engine.write(5 * BS, rng.randbytes(BS))  # noticed: replica 2 goes ERR
        assert engine.replicas[2].mode is Mode.ERR
        await engine.write(3 << 20, rng.randbytes(BS))
        await nodes.start(2)
        rebuilder = rebuild.Rebuilder(engine, timeout=5)
        rebuilder.start(address)
        progress = await rebuilder.wait(address)
        assert progress.state == "done", progress.error
        assert progress.transferred <= 2 * 2 * (2 << 20)  # two changed 2 MiB blocks at most
        assert progress.skipped >= SIZE - 4 * (2 << 20)
        stores = [nodes.servers[i].store for i in range(3)]
        assert len({s.checksum() for s in stores}) == 1
        assert layout(stores[0]) == layout(stores[2])


async def test_partial_block_writes_during_a_rebuild_are_merged(tmp_path: pathlib.Path) -> None:
    async with cluster(tmp_path, 1) as (nodes, engine):
        await engine.write(0, b"\xaa" * (64 * BS))
        address = await nodes.start(1)
        rebuilder = rebuild.Rebuilder(engine, timeout=5)
        real_copy = rebuilder._copy_file

        async def copy_after_partial_writes(*args: object) -> None:
            await engine.write(100, b"\xbb" * 50)  # copy-up of a block whose snapshot data has not arrived
            await engine.write(BS * 3 + 4000, b"\xcc" * 200)  # spans two blocks, both partial
            await engine.write_zeroes(BS * 10 + 512, 1024)
            await real_copy(*args)  # type: ignore[arg-type]

        rebuilder._copy_file = copy_after_partial_writes  # type: ignore[method-assign]
        rebuilder.start(address)
        progress = await rebuilder.wait(address)
        assert progress.state == "done", progress.error
        stores = [nodes.servers[i].store for i in range(2)]
        expected = bytearray(b"\xaa" * (64 * BS))
        expected[100:150] = b"\xbb" * 50
        expected[BS * 3 + 4000 : BS * 3 + 4200] = b"\xcc" * 200
        expected[BS * 10 + 512 : BS * 10 + 1536] = bytes(1024)
        for store in stores:
            assert store.read(0, 64 * BS) == expected
        assert len({s.checksum() for s in stores}) == 1


async def test_a_failed_rebuild_sets_err_and_a_retry_resumes(tmp_path: pathlib.Path) -> None:
    rng = random.Random(3)
    async with cluster(tmp_path, 2) as (nodes, engine):
        for at in range(0, SIZE, 1 << 20):
            await engine.write(at, rng.randbytes(1 << 20))
        address = await nodes.start(2)
        rebuilder = rebuild.Rebuilder(engine, timeout=5)
        real_copy = rebuilder._copy_file
        calls = 0

        async def copy_then_fail(*args: object) -> None:
            nonlocal calls
            calls += 1
            await real_copy(*args)  # type: ignore[arg-type]
            if calls == 1:
                raise errors.StorageIOError("injected: connection dropped")

        rebuilder._copy_file = copy_then_fail  # type: ignore[method-assign]
        rebuilder.start(address)
        first = await rebuilder.wait(address)
        assert first.state == "error" and "injected" in first.error
        assert engine.replicas[2].mode is Mode.ERR
        await engine.write(0, rng.randbytes(BS))
        rebuilder.start(address)
        second = await rebuilder.wait(address)
        assert second.state == "done", second.error
        assert second.transferred < first.transferred // 4  # the files copied before the failure are reused
        assert engine.replicas[2].mode is Mode.RW
        stores = [nodes.servers[i].store for i in range(3)]
        assert len({s.checksum() for s in stores}) == 1


async def test_rebuild_refuses_a_replica_already_in_service(tmp_path: pathlib.Path) -> None:
    async with cluster(tmp_path, 2) as (nodes, engine):
        rebuilder = rebuild.Rebuilder(engine, timeout=5)
        with pytest.raises(errors.AlreadyExists):
            rebuilder.start(nodes.paths[0])


async def test_remove_replica_keeps_the_last_rw(tmp_path: pathlib.Path) -> None:
    async with cluster(tmp_path, 2) as (nodes, engine):
        engine.remove_replica(nodes.paths[1])
        assert [r.address for r in engine.replicas] == [nodes.paths[0]]
        with pytest.raises(errors.Conflict):
            engine.remove_replica(nodes.paths[0])
        await engine.write(0, b"x" * BS)
