"""The test kit's block devices, and the conformance check run against them (and against a broken one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from metalhorn.common import errors
from metalhorn.testing.blockdevs import FaultyBlockDevice, MemoryBlockDevice, check_block_device


async def test_memory_device_conforms() -> None:
    await check_block_device(MemoryBlockDevice)


async def test_faulty_device_without_faults_conforms_via_async_factories() -> None:
    async def make(size: int) -> FaultyBlockDevice:
        return FaultyBlockDevice(MemoryBlockDevice(size))

    await check_block_device(make, size=2 * 1024 * 1024)

    closed = []

    @contextlib.asynccontextmanager
    async def managed(size: int) -> AsyncIterator[MemoryBlockDevice]:
        yield MemoryBlockDevice(size)
        closed.append(size)

    await check_block_device(managed)
    assert closed == [4 * 1024 * 1024]


async def test_faults_are_injected_per_operation_and_count() -> None:
    device = FaultyBlockDevice(MemoryBlockDevice(8192))
    device.inject("write", errors.NoSpace("full"), count=2)
    for _ in range(2):
        with pytest.raises(errors.NoSpace):
            await device.write(0, b"x")
    await device.write(0, b"x")
    device.inject("read", errors.StorageIOError("bad"))
    for _ in range(3):
        with pytest.raises(errors.StorageIOError):
            await device.read(0, 1)
    await device.flush()  # other operations are unaffected
    device.clear("read")
    assert await device.read(0, 1) == b"x"
    assert device.calls == {"read": 4, "write": 3, "flush": 1, "trim": 0, "write_zeroes": 0}
    with pytest.raises(errors.InvalidArgument):
        device.inject("format", errors.Internal("x"))


class ShortReads(MemoryBlockDevice):
    async def read(self, offset: int, length: int) -> bytes:
        return await super().read(offset, min(length, self.size - offset))


class IgnoresZeroes(MemoryBlockDevice):
    async def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        if may_trim:
            return  # "trimmed" but still reads old data: wrong for write_zeroes
        await super().write_zeroes(offset, length, may_trim=may_trim)


class ReordersWrites(MemoryBlockDevice):
    """Completes the first overlapping write last: breaks the issue-order rule."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.held: bytes | None = None

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        if offset == 512 * 1024 and self.held is None:
            self.held = data
            await asyncio.sleep(0.001)
        await super().write(offset, data, fua=fua)


@pytest.mark.parametrize(
    ("device", "message"),
    [(ShortReads, "read past the end"), (IgnoresZeroes, "write_zeroes"), (ReordersWrites, "issued concurrently")],
    ids=["short-read", "ignored-zeroes", "reordered-writes"],
)
async def test_check_catches_broken_devices(device: type[MemoryBlockDevice], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_block_device(device)
