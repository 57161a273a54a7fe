"""The engine over in-process fake replicas: fan-out, replica failures, read retry, start-up choice, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import pytest
from engine_fake_replica import FakeReplica

from metalhorn.common import errors
from metalhorn.storage.engine import engine as engine_mod
from metalhorn.storage.engine.policy import Mode
from metalhorn.storage.wire import codec

SIZE = 1 << 20
T = codec.FrameType
E = errors.ErrorCode


def fail_on(ftype: codec.FrameType, code: errors.ErrorCode = E.IO):  # type: ignore[no-untyped-def]
    return lambda frame: code if frame.type == ftype else None


@contextlib.asynccontextmanager
async def fakes(count: int = 3, **kwargs: object) -> AsyncIterator[list[FakeReplica]]:
    replicas = [FakeReplica(SIZE, **kwargs) for _ in range(count)]  # type: ignore[arg-type]
    try:
        for replica in replicas:
            await replica.start()
        yield replicas
    finally:
        for replica in replicas:
            await replica.stop()


@contextlib.asynccontextmanager
async def opened(replicas: Sequence[FakeReplica], *, request_timeout: float = 2.0) -> AsyncIterator[engine_mod.Engine]:
    engine = await engine_mod.Engine.open(
        volume="vol", size=SIZE, addresses=[r.address for r in replicas], timeout=request_timeout
    )
    try:
        yield engine
    finally:
        engine.close()
        await asyncio.wait_for(engine.wait_closed(), 2)


@pytest.fixture
async def three() -> AsyncIterator[list[FakeReplica]]:
    async with fakes(3) as replicas:
        yield replicas


def modes(engine: engine_mod.Engine) -> list[str]:
    return [r["mode"] for r in engine.info()["replicas"]]


def served(replica: FakeReplica, name: str) -> int:
    return sum(1 for kind, _, _ in replica.log if kind == name)


async def test_writes_fan_out_and_reads_round_robin(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        await engine.write(8192, b"abc" * 1000, fua=True)
        for replica in three:
            assert replica.data[8192 : 8192 + 3000] == b"abc" * 1000
        for _ in range(6):
            assert await engine.read(8192, 3000) == b"abc" * 1000
        assert [served(r, "READ") for r in three] == [2, 2, 2]
        await engine.flush()
        assert [served(r, "FLUSH") for r in three] == [1, 1, 1]
        info = engine.info()
        assert info["volume"] == "vol" and info["size"] == SIZE
        assert info["counters"]["writes"] == 1 and info["counters"]["write_bytes"] == 3000
        assert info["counters"]["reads"] == 6 and info["counters"]["flushes"] == 1
        assert modes(engine) == ["RW", "RW", "RW"]


async def test_concurrent_writes_reach_every_replica_in_the_same_order(three: list[FakeReplica]) -> None:
    three[1].reverse_batches = True  # replies out of order must not matter
    async with opened(three) as engine:
        await asyncio.gather(*(engine.write(0, bytes([i]) * 512) for i in range(50)))
        orders = [[(kind, off, n) for kind, off, n in r.log if kind == "WRITE"] for r in three]
        assert orders[0] == orders[1] == orders[2]
        assert three[0].data[:512] == three[1].data[:512] == three[2].data[:512] == bytes([49]) * 512


async def test_one_replica_failing_goes_err_and_io_continues(
    three: list[FakeReplica], caplog: pytest.LogCaptureFixture
) -> None:
    async with opened(three) as engine:
        three[1].fault = fail_on(T.WRITE)
        with caplog.at_level(logging.WARNING):
            await engine.write(0, b"x" * 4096)
        assert modes(engine) == ["RW", "ERR", "RW"]
        assert "injected IO" in engine.info()["replicas"][1]["reason"]
        assert any(
            "replica=" + three[1].address in rec.message and "from=RW" in rec.message and "to=ERR" in rec.message
            for rec in caplog.records
        )
        writes_before = served(three[1], "WRITE")
        await engine.write(4096, b"y" * 4096)
        assert served(three[1], "WRITE") == writes_before  # an ERR replica gets no more I/O
        assert await engine.read(4096, 4096) == b"y" * 4096
        await engine.trim(0, 4096)
        await engine.write_zeroes(4096, 4096)
        await engine.flush()


async def test_every_replica_failing_fails_the_write_and_then_the_volume(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        for replica in three:
            replica.fault = fail_on(T.WRITE)
        with pytest.raises(errors.StorageIOError, match="every RW replica failed"):
            await engine.write(0, b"x")
        assert modes(engine) == ["ERR", "ERR", "ERR"]
        with pytest.raises(errors.Unavailable, match="no replica is in RW mode"):
            await engine.write(0, b"x")
        with pytest.raises(errors.Unavailable):
            await engine.read(0, 1)
        assert engine.info()["counters"]["errors"] >= 3


async def test_all_nospace_returns_nospace_and_keeps_rw(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        for replica in three:
            replica.fault = fail_on(T.WRITE, E.NO_SPACE)
        with pytest.raises(errors.NoSpace):
            await engine.write(0, b"x" * 10)
        assert modes(engine) == ["RW", "RW", "RW"]
        for replica in three:
            replica.fault = None  # space freed
        await engine.write(0, b"x" * 10)
        assert await engine.read(0, 10) == b"x" * 10


async def test_failed_read_marks_err_and_retries_elsewhere(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        await engine.write(0, b"data")
        three[0].fault = fail_on(T.READ)
        assert await engine.read(0, 4) == b"data"  # round-robin starts at replica 0, which fails
        assert modes(engine) == ["ERR", "RW", "RW"]
        assert served(three[0], "READ") == 1
        assert served(three[1], "READ") + served(three[2], "READ") == 1  # retried once, on another RW replica


async def test_last_replica_read_failure_is_an_error(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        for replica in three:
            replica.fault = fail_on(T.READ)
        with pytest.raises(errors.StorageIOError):
            await engine.read(0, 4)
        assert modes(engine) == ["ERR", "ERR", "ERR"]


async def test_silent_replica_times_out_and_goes_err() -> None:
    async with fakes(2) as replicas, opened(replicas, request_timeout=0.05) as engine:
        replicas[0].silent = True
        await engine.write(0, b"z" * 100)
        assert modes(engine) == ["ERR", "RW"]
        assert "timed out" in engine.info()["replicas"][0]["reason"]
        assert bytes(replicas[1].data[:100]) == b"z" * 100


async def test_connection_loss_takes_replica_out_even_when_idle(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        three[2].drop_connections()
        for _ in range(200):  # bounded wait for the loop to see the loss
            if modes(engine)[2] == "ERR":
                break
            await asyncio.sleep(0.005)
        assert modes(engine) == ["RW", "RW", "ERR"]
        await engine.write(0, b"ok")


async def test_out_of_range_is_checked_before_any_io(three: list[FakeReplica]) -> None:
    async with opened(three) as engine:
        with pytest.raises(errors.OutOfRange):
            await engine.write(SIZE - 1, b"xx")
        with pytest.raises(errors.OutOfRange):
            await engine.read(SIZE, 1)
        with pytest.raises(errors.OutOfRange):
            await engine.trim(-1, 10)
        with pytest.raises(errors.OutOfRange):
            await engine.write_zeroes(0, SIZE + 1)
        assert all(r.log == [("CONTROL", 0, 0)] for r in three)


async def test_big_requests_are_split(three: list[FakeReplica], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "CHUNK", 4096)
    async with opened(three) as engine:
        payload = bytes(range(256)) * 48  # 12 KiB -> 3 chunks
        await engine.write(4096, payload)
        assert await engine.read(4096, len(payload)) == payload
        await engine.write_zeroes(4096, 10000, may_trim=False)
        await engine.trim(0, 8192)
        for replica in three:
            writes = [(off, n) for kind, off, n in replica.log if kind == "WRITE"]
            assert writes == [(4096, 4096), (8192, 4096), (12288, 4096)]
            zeroes = [(off, n) for kind, off, n in replica.log if kind == "WRITE_ZEROES"]
            assert zeroes == [(4096, 4096), (8192, 4096), (12288, 1808)]
            assert bytes(replica.data[4096 : 4096 + 10000]) == bytes(10000)


async def test_write_zeroes_without_trim_sends_no_hole(three: list[FakeReplica]) -> None:
    flags: list[int] = []

    def record(frame: codec.Frame) -> None:
        if frame.type == T.WRITE_ZEROES:
            flags.append(frame.flags)

    three[0].fault = record  # type: ignore[assignment]
    async with opened(three) as engine:
        await engine.write_zeroes(0, 4096, may_trim=False)
        await engine.write_zeroes(0, 4096)
    assert flags == [int(codec.Flags.NO_HOLE), 0]


async def test_stale_replica_at_start_goes_err() -> None:
    async with fakes(3) as replicas:
        replicas[0].revision = replicas[1].revision = 7
        replicas[2].revision = 3
        async with opened(replicas) as engine:
            assert modes(engine) == ["RW", "RW", "ERR"]
            assert engine.info()["replicas"][2]["reason"] == "stale: revision 3 < 7"
            await engine.write(0, b"x")
            assert served(replicas[2], "WRITE") == 0


async def test_chain_mismatch_at_start_goes_err() -> None:
    async with fakes(3) as replicas:
        replicas[1].chain = ["volume-head-001.img", "volume-snap-a.img"]
        replicas[1].head = "volume-head-001.img"
        replicas[0].chain = replicas[2].chain = ["volume-head-000.img", "volume-snap-a.img"]
        replicas[1].chain = ["volume-head-001.img", "volume-snap-b.img"]
        async with opened(replicas) as engine:
            assert modes(engine) == ["RW", "ERR", "RW"]
            assert "differs" in engine.info()["replicas"][1]["reason"]


async def test_unreachable_replica_at_start_goes_err() -> None:
    async with fakes(3) as replicas:
        await replicas[1].stop()
        async with opened(replicas) as engine:
            assert modes(engine) == ["RW", "ERR", "RW"]
            assert engine.info()["replicas"][1]["reason"].startswith("unreachable: UNAVAILABLE")
            await engine.write(0, b"x")


async def test_refuses_to_start_without_a_usable_replica() -> None:
    async with fakes(2) as replicas:
        for replica in replicas:
            await replica.stop()
        with pytest.raises(errors.Unavailable, match="no usable replica"):
            await engine_mod.Engine.open(volume="v", size=SIZE, addresses=[r.address for r in replicas], timeout=1)


async def test_refuses_to_start_when_sizes_disagree() -> None:
    async with fakes(2) as replicas:
        replicas[1].size = SIZE * 2
        with pytest.raises(errors.InvalidArgument, match="does not match --size"):
            await engine_mod.Engine.open(volume="v", size=SIZE, addresses=[r.address for r in replicas], timeout=1)


async def test_rebuild_hooks_add_wo_then_promote(three: list[FakeReplica]) -> None:
    async with fakes(1) as (extra,), opened(three[:2]) as engine:
        replica = await engine.add_replica(extra.address, timeout=1)
        assert replica.mode is Mode.WO
        assert modes(engine) == ["RW", "RW", "WO"]
        await engine.write(0, b"w" * 10)
        assert bytes(extra.data[:10]) == b"w" * 10
        for _ in range(4):
            await engine.read(0, 10)
        assert served(extra, "READ") == 0  # WO replicas never serve reads
        engine.set_mode(extra.address, Mode.RW, "rebuilt")
        assert modes(engine) == ["RW", "RW", "RW"]
        with pytest.raises(errors.InvalidArgument):
            engine.set_mode(extra.address, Mode.WO)
        with pytest.raises(errors.AlreadyExists):
            await engine.add_replica(extra.address, timeout=1)


async def test_closed_engine_is_unavailable(three: list[FakeReplica]) -> None:
    engine = await engine_mod.Engine.open(volume="v", size=SIZE, addresses=[r.address for r in three], timeout=1)
    engine.close()
    await engine.wait_closed()
    with pytest.raises(errors.Unavailable, match="closed"):
        await engine.write(0, b"x")
    assert modes(engine) == ["RW", "RW", "RW"]


def test_the_same_under_uvloop() -> None:
    """Daemons run on uvloop (its transports differ from asyncio's): fan-out, failure and read retry there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[str]:
        async with fakes(3) as replicas, opened(replicas) as engine:
            await engine.write(0, b"u" * 4096, fua=True)
            replicas[0].fault = fail_on(T.READ)
            replicas[2].fault = fail_on(T.WRITE)
            await engine.write(4096, b"v" * 4096)
            assert await engine.read(0, 4096) == b"u" * 4096
            assert await engine.read(4096, 4096) == b"v" * 4096
            await engine.flush()
            return modes(engine)

    assert uvloop.run(scenario()) == ["ERR", "RW", "ERR"]
