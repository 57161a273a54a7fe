"""File primitives of a replica: crash-safe metadata writes, hole punching, data extents via SEEK_DATA/SEEK_HOLE.

Python has no binding for ``fallocate(FALLOC_FL_PUNCH_HOLE)``, so it is called through libc with ctypes. Zeros
that must stay *allocated* are written with pwrite, never with FALLOC_FL_ZERO_RANGE: ext4 turns that into
unwritten extents, which SEEK_DATA may report as holes, and then old snapshot data would reappear at reopen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from collections.abc import Callable

from metalhorn.common import errors

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
ZERO_CHUNK = 1 << 20
_ZEROS = bytes(ZERO_CHUNK)


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int]:
    """libc's fallocate(2), loaded on first use."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    func = libc.fallocate
    func.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    func.restype = ctypes.c_int
    return func


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate [offset, offset+length) keeping the file size; reads of it return zeros."""
    if length <= 0:
        return
    if _fallocate()(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write_zeros(fd: int, offset: int, length: int) -> None:
    """Write allocated zeros (see the module docstring for why not ZERO_RANGE)."""
    while length > 0:
        n = min(length, ZERO_CHUNK)
        pwrite_all(fd, _ZEROS[:n] if n < ZERO_CHUNK else _ZEROS, offset)
        offset += n
        length -= n


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    written = os.pwrite(fd, data, offset)
    if written == len(data):  # the common case: one syscall, no memoryview
        return
    if written <= 0:
        raise OSError(errno.EIO, "short write")
    view = memoryview(data)[written:]
    offset += written
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]
        offset += written


def pread_into(fd: int, buf: memoryview, offset: int) -> None:
    """Fill `buf` from the file; past end of file stays as it is (the caller passes zeros)."""
    while buf:
        n = os.preadv(fd, [buf], offset)
        if n <= 0:
            return
        buf = buf[n:]
        offset += n


def data_extents(fd: int, *, limit: int) -> list[tuple[int, int]]:
    """Allocated byte extents [(offset, length)] of a file below `limit`, via SEEK_DATA/SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < limit:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            raise
        if start >= limit:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        end = min(end, limit)
        out.append((start, end - start))
        pos = end
    return out


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(directory: str, name: str, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace `name` with `data` so a crash leaves either the old or the new content: temp, fsync, rename."""
    final = os.path.join(directory, name)
    tmp = final + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        if sync_dir:
            fsync_dir(directory)
    except OSError as exc:
        raise errors.from_oserror(exc, f"writing {final}") from exc


def read_small(directory: str, name: str, *, limit: int = 1 << 20) -> bytes:
    """Read a metadata file; a missing or unreadable one is CorruptMetadata naming it."""
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)[:limit]
    except FileNotFoundError:
        raise errors.CorruptMetadata(f"{path}: missing; refusing to open the replica (repair or rebuild it)") from None
    except OSError as exc:
        raise errors.CorruptMetadata(f"{path}: cannot be read: {exc.strerror or exc}") from exc
