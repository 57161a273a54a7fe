"""Block devices for tests, and the conformance check every BlockDevice must pass.

- MemoryBlockDevice(size): a bytearray; every call completes without suspending, so the order of issue is
  the order of effect, and concurrency bugs of callers show up deterministically.
- FaultyBlockDevice(inner): forwards to ``inner`` but fails chosen operations on demand.
- check_block_device(factory): async conformance check; run it against every implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias

from metalhorn.common import errors
from metalhorn.storage.blockdev import BlockDevice, check_range

OPERATIONS = ("read", "write", "flush", "trim", "write_zeroes")


class MemoryBlockDevice:
    """A BlockDevice in a bytearray. Trim zeroes (allowed: "reads as its old data or as zeros")."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise errors.InvalidArgument(f"size {size} is negative")
        self._data = bytearray(size)
        self.writes = 0
        self.flushes = 0
        self.fua_writes = 0

    @property
    def size(self) -> int:
        return len(self._data)

    def snapshot(self) -> bytes:
        """The whole content, for assertions."""
        return bytes(self._data)

    async def read(self, offset: int, length: int) -> bytes:
        check_range(len(self._data), offset, length)
        with memoryview(self._data) as view:
            return bytes(view[offset : offset + length])

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        check_range(len(self._data), offset, len(data))
        self._data[offset : offset + len(data)] = data
        self.writes += 1
        if fua:
            self.fua_writes += 1

    async def flush(self) -> None:
        self.flushes += 1

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        check_range(len(self._data), offset, length)
        self._data[offset : offset + length] = bytes(length)


@dataclasses.dataclass
class _Fault:
    error: errors.MetalhornError
    remaining: int | None  # None: fail until cleared


class FaultyBlockDevice:
    """Wraps a BlockDevice; ``inject("write", NoSpace("..."), count=1)`` makes the next write fail."""

    def __init__(self, inner: BlockDevice) -> None:
        self.inner = inner
        self._faults: dict[str, _Fault] = {}
        self.calls: dict[str, int] = dict.fromkeys(OPERATIONS, 0)

    def inject(self, operation: str, error: errors.MetalhornError, *, count: int | None = None) -> None:
        """Fail ``operation`` with ``error``: the next ``count`` calls, or every call until ``clear``."""
        if operation not in OPERATIONS:
            raise errors.InvalidArgument(f"unknown operation {operation!r}; expected one of {OPERATIONS}")
        self._faults[operation] = _Fault(error, count)

    def clear(self, operation: str | None = None) -> None:
        if operation is None:
            self._faults.clear()
        else:
            self._faults.pop(operation, None)

    def _check(self, operation: str) -> None:
        self.calls[operation] += 1
        fault = self._faults.get(operation)
        if fault is None:
            return
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self._faults[operation]
        raise fault.error

    @property
    def size(self) -> int:
        return self.inner.size

    async def read(self, offset: int, length: int) -> bytes:
        self._check("read")
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        self._check("write")
        await self.inner.write(offset, data, fua=fua)

    async def flush(self) -> None:
        self._check("flush")
        await self.inner.flush()

    async def trim(self, offset: int, length: int) -> None:
        self._check("trim")
        await self.inner.trim(offset, length)

    async def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        self._check("write_zeroes")
        await self.inner.write_zeroes(offset, length, may_trim=may_trim)


DeviceFactory: TypeAlias = Callable[
    [int], "BlockDevice | Awaitable[BlockDevice] | contextlib.AbstractAsyncContextManager[BlockDevice]"
]


@contextlib.asynccontextmanager
async def _opened(factory: DeviceFactory, size: int) -> AsyncIterator[BlockDevice]:
    made = factory(size)
    if isinstance(made, contextlib.AbstractAsyncContextManager):
        async with made as device:
            yield device
    elif inspect.isawaitable(made):
        yield await made
    else:
        yield made


def _pattern(seed: int, length: int) -> bytes:
    """Deterministic non-zero bytes that differ between seeds and within a block."""
    unit = bytes(((seed * 31 + i * 7) % 255) + 1 for i in range(251))
    return (unit * (length // len(unit) + 1))[:length]


async def _expect(device: BlockDevice, offset: int, expected: bytes, what: str) -> None:
    got = await device.read(offset, len(expected))
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b) if got else 0
        raise AssertionError(f"{what}: read at {offset} length {len(expected)} differs from byte {first}")


async def _expect_error(coro: Awaitable[object], kind: type[errors.MetalhornError], what: str) -> None:
    try:
        await coro
    except kind:
        return
    except errors.MetalhornError as exc:
        raise AssertionError(f"{what}: raised {type(exc).__name__}, expected {kind.__name__}") from exc
    raise AssertionError(f"{what}: did not raise {kind.__name__}")


async def check_block_device(factory: DeviceFactory, *, size: int = 4 * 1024 * 1024) -> None:
    """Conformance check of a BlockDevice implementation; raises AssertionError naming the broken rule.

    ``factory(size)`` returns a fresh, zero-filled device of ``size`` bytes (a multiple of 4096), directly,
    as an awaitable, or as an async context manager (which is then also closed).
    """
    async with _opened(factory, size) as device:
        if device.size != size:
            raise AssertionError(f"size: device reports {device.size}, expected {size}")
        await _expect(device, 0, bytes(8192), "fresh device reads zeros at the start")
        await _expect(device, size - 8192, bytes(8192), "fresh device reads zeros at the end")

        # Aligned writes at both edges, and the very last byte.
        first, last = _pattern(1, 4096), _pattern(2, 4096)
        await device.write(0, first)
        await device.write(size - 4096, last)
        await _expect(device, 0, first, "aligned write at offset 0")
        await _expect(device, size - 4096, last, "aligned write of the last block")
        await device.write(size - 1, b"\xee")
        await _expect(device, size - 2, last[-2:-1] + b"\xee", "write of the last byte")

        # Unaligned writes keep their neighbours.
        base = 64 * 1024
        await device.write(base, _pattern(3, 3 * 4096))
        await device.write(base + 4095, b"\x01\x02")
        expected = bytearray(_pattern(3, 3 * 4096))
        expected[4095:4097] = b"\x01\x02"
        await _expect(device, base, bytes(expected), "2-byte write across a block boundary")
        odd = _pattern(4, 10_000)
        await device.write(base + 1000, odd, fua=True)
        expected[1000:11_000] = odd
        await _expect(device, base, bytes(expected), "unaligned 10000-byte FUA write")
        await _expect(device, base + 4097, bytes(expected[4097:4098]), "1-byte unaligned read")
        await device.flush()

        # write_zeroes, with and without permission to deallocate, aligned and not.
        await device.write_zeroes(base + 4096, 4096, may_trim=False)
        expected[4096:8192] = bytes(4096)
        await _expect(device, base, bytes(expected), "aligned write_zeroes(may_trim=False)")
        await device.write_zeroes(base + 10, 100, may_trim=True)
        expected[10:110] = bytes(100)
        await _expect(device, base, bytes(expected), "unaligned write_zeroes(may_trim=True)")

        # trim: the range reads as old data or zeros; everything around it is unchanged.
        zone = 256 * 1024
        old = _pattern(5, 4 * 4096)
        await device.write(zone, old)
        await device.trim(zone + 4096 + 17, 2 * 4096)
        after = await device.read(zone, len(old))
        lo, hi = 4096 + 17, 3 * 4096 + 17
        if after[:lo] != old[:lo] or after[hi:] != old[hi:]:
            raise AssertionError("trim changed bytes outside its range")
        if any(b not in (0, o) for b, o in zip(after[lo:hi], old[lo:hi], strict=True)):
            raise AssertionError("trim left bytes that are neither the old data nor zeros")

        # Overlapping writes issued without waiting take effect in issue order.
        hot = 512 * 1024
        await asyncio.gather(*(device.write(hot, _pattern(10 + i, 4096)) for i in range(8)))
        await _expect(device, hot, _pattern(17, 4096), "overlapping writes issued concurrently (last wins)")
        await asyncio.gather(device.write(hot, _pattern(30, 4096)), device.write_zeroes(hot + 100, 200))
        await _expect(device, hot, _pattern(30, 100) + bytes(200), "write then write_zeroes, issued together")

        # Many concurrent writes to distinct blocks, then concurrent reads.
        blocks = range(1024 * 1024 // 4096, 1024 * 1024 // 4096 + 64)
        await asyncio.gather(*(device.write(b * 4096, _pattern(b, 4096)) for b in blocks))
        reads = await asyncio.gather(*(device.read(b * 4096, 4096) for b in blocks))
        if any(data != _pattern(b, 4096) for b, data in zip(blocks, reads, strict=True)):
            raise AssertionError("concurrent writes to distinct blocks did not all land")

        # Out of range: OutOfRange, never a short read or a silent partial write.
        await _expect_error(device.read(size - 1, 2), errors.OutOfRange, "read past the end")
        await _expect_error(device.read(size, 1), errors.OutOfRange, "read at the end")
        await _expect_error(device.write(size - 1, b"xy"), errors.OutOfRange, "write past the end")
        await _expect_error(device.trim(size, 4096), errors.OutOfRange, "trim past the end")
        await _expect_error(device.write_zeroes(size - 10, 20), errors.OutOfRange, "write_zeroes past the end")
        await _expect(device, size - 2, last[-2:-1] + b"\xee", "a refused write changed nothing")
