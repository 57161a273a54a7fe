"""The block device interface every layer of the data path speaks.

A frontend (NBD, later iSCSI) serves a BlockDevice; the engine is one; the testing kit has in-memory ones.
Offsets and lengths are bytes. Errors are metalhorn.common.errors (OutOfRange, StorageIOError, NoSpace...).
"""

from __future__ import annotations

from typing import Protocol

from metalhorn.common import errors


class BlockDevice(Protocol):
    @property
    def size(self) -> int:
        """Current size in bytes."""
        ...

    async def read(self, offset: int, length: int) -> bytes: ...

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        """Write data; with fua the data is durable when this returns."""
        ...

    async def flush(self) -> None:
        """Make every acknowledged write durable."""
        ...

    async def trim(self, offset: int, length: int) -> None:
        """Advisory discard: afterwards the range reads as its old data or as zeros."""
        ...

    async def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        """The range reads as zeros afterwards; may_trim allows deallocating it."""
        ...


def check_range(size: int, offset: int, length: int) -> None:
    """Raise OutOfRange unless [offset, offset+length) lies inside a device of `size` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise errors.OutOfRange(f"range offset={offset} length={length} is outside the device of {size} bytes")
