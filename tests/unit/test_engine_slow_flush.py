"""A slow fsync is not a dead replica: FLUSH and snapshot requests get a long deadline, and a snapshot flushes first.

Found by bench/snapshot_latency: after 20 s of 4 KiB random writes a FLUSH took 8.6 s (the default replica timeout
is 8 s), and the first snapshot under load timed out on all three replicas at once -- every replica ERR, fio EIO.
Here a fake replica answers FLUSH (and snap.create) only after many request timeouts; writes and pings at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from engine_fake_replica import FakeReplica

from metalhorn.storage.engine import engine as engine_mod
from metalhorn.storage.engine import snapshots
from metalhorn.storage.wire import codec

SIZE = 1 << 20
TIMEOUT = 0.05  # the engine's per-request replica timeout in these tests
SLOW = 0.3  # a flush takes six timeouts
T = codec.FrameType


class SlowSyncReplica(FakeReplica):
    """Answers FLUSH and snap.create after SLOW seconds (an fsync of a big backlog); everything else at once.

    Like the real replica, frames that arrive while a snapshot cuts the head wait for the cut (FLUSH does not block
    the stream: it runs in a worker thread there).
    """

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.cutting = False
        self.behind_cut: list[codec.Frame] = []

    def handle(self, frame: codec.Frame) -> codec.Frame | None:
        if self.cutting:
            self.behind_cut.append(frame)
            return None
        op = json.loads(frame.payload).get("op") if frame.type == T.CONTROL else None
        if op in PURGE_OPS:
            self.log.append((str(op), 0, 0))
            result = PURGE_OPS[str(op)](self)
            if op in ("snap.fold", "snap.fold_commit"):  # they copy and fsync: slow
                asyncio.get_running_loop().call_later(SLOW, self._send, [frame.reply(payload=result)])
                return None
            return frame.reply(payload=result)
        if op == "snap.create":
            self.log.append(("snap.create", 0, 0))
            self.cutting = True
            asyncio.get_running_loop().call_later(SLOW, self._cut_done, frame.reply(payload=b"{}"))
            return None
        if frame.type == T.FLUSH:
            self.log.append(("FLUSH", 0, 0))
            asyncio.get_running_loop().call_later(SLOW, self._send, [frame.reply()])
            return None
        return super().handle(frame)

    def _cut_done(self, reply: codec.Frame) -> None:
        self.cutting = False
        waiting, self.behind_cut = self.behind_cut, []
        replies = [reply] + [answer for frame in waiting if (answer := self.handle(frame)) is not None]
        self._send(replies)

    def _send(self, replies: list[codec.Frame]) -> None:
        for conn in self.connections:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.writelines([codec.encode(reply) for reply in replies])


def _purge_next(replica: SlowSyncReplica) -> bytes:
    done = any(name == "snap.fold_commit" for name, _offset, _length in replica.log)
    return b"{}" if done else json.dumps({"snapshot": "volume-snap-old.img", "child": "volume-head-001.img"}).encode()


PURGE_OPS = {
    "snap.remove_system": lambda _replica: b"{}",
    "snap.purge_next": _purge_next,
    "snap.fold": lambda _replica: b'{"next": -1}',
    "snap.fold_commit": lambda _replica: b"{}",
}


@contextlib.asynccontextmanager
async def volume() -> AsyncIterator[tuple[engine_mod.Engine, list[SlowSyncReplica]]]:
    replicas = [SlowSyncReplica(SIZE) for _ in range(3)]
    try:
        for replica in replicas:
            await replica.start()
        engine = await engine_mod.Engine.open(
            volume="vol", size=SIZE, addresses=[r.address for r in replicas], timeout=TIMEOUT
        )
        try:
            yield engine, replicas
        finally:
            engine.close()
            await asyncio.wait_for(engine.wait_closed(), 2)
    finally:
        for replica in replicas:
            await replica.stop()


def modes(engine: engine_mod.Engine) -> list[str]:
    return [r.mode.value for r in engine.replicas]


async def test_a_slow_flush_keeps_every_replica_rw() -> None:
    async with volume() as (engine, _replicas):
        await engine.write(0, b"a" * 4096)
        await engine.flush()  # six request timeouts long
        assert modes(engine) == ["RW", "RW", "RW"]
        await engine.ping()  # liveness still has the short deadline, and they are alive
        assert modes(engine) == ["RW", "RW", "RW"]


async def test_a_silent_replica_still_goes_err_through_the_ping() -> None:
    async with volume() as (engine, replicas):
        replicas[1].silent = True
        await engine.ping()
        assert modes(engine) == ["RW", "ERR", "RW"]


async def test_snapshot_flushes_every_replica_first_and_waits_for_a_slow_cut() -> None:
    async with volume() as (engine, replicas):
        history = snapshots.History(engine, frontend_up=lambda: True)
        await engine.write(0, b"b" * 4096)
        result = await history.create({"name": "s1"})
        assert sorted(result["replicas"]) == sorted(r.address for r in replicas)
        assert modes(engine) == ["RW", "RW", "RW"]
        for replica in replicas:
            names = [name for name, _offset, _length in replica.log]
            assert "FLUSH" in names and names.index("FLUSH") < names.index("snap.create"), names


async def test_writes_during_a_slow_cut_wait_in_the_engine_not_on_the_wire() -> None:
    async with volume() as (engine, replicas):
        history = snapshots.History(engine, frontend_up=lambda: True)
        create = asyncio.create_task(history.create({"name": "s2"}))
        for _ in range(200):  # bounded: until every replica is cutting (after the flush that precedes the cut)
            if all(r.cutting for r in replicas):
                break
            await asyncio.sleep(0.01)
        assert all(r.cutting for r in replicas)
        await engine.write(4096, b"c" * 4096)  # on the wire now it would wait SLOW, six request timeouts
        await create
        assert modes(engine) == ["RW", "RW", "RW"]
        assert all(bytes(r.data[4096:8192]) == b"c" * 4096 for r in replicas)


async def test_a_purge_whose_folds_are_slow_keeps_every_replica_rw() -> None:
    async with volume() as (engine, replicas):
        history = snapshots.History(engine, frontend_up=lambda: True)
        result = await history.purge({})
        assert result["purged"] == ["volume-snap-old.img"]
        assert modes(engine) == ["RW", "RW", "RW"]
        assert all(("snap.fold_commit", 0, 0) in r.log for r in replicas)
