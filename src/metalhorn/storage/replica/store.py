"""A replica on disk: a directory of sparse files forming a snapshot chain (Longhorn layout, DESIGN.md §2).

The store is synchronous on purpose. The replica server calls it in frame order on its event loop: page-cache
reads and writes are fast, and doing them inline keeps ordering trivial (a FLUSH covers every write received
before it). Only fsync is slow, so the server runs ``sync()`` in a thread.

Reads resolve each 4 KiB block through the in-memory extent map (storage.chain.extents), built at open from
SEEK_DATA/SEEK_HOLE of every layer. Writes go to the head. Allocation decides the chain, so:

- an unaligned write to a block that only a lower layer holds first copies that block into the head
  (read-modify-write), otherwise the rest of the block would read as zeros;
- UNMAP punches holes in the head only where no snapshot holds the block (a hole means "look below", so
  punching there would resurrect old snapshot data);
- WRITE_ZEROES writes allocated zeros where a snapshot holds the block (or the caller forbids holes), and
  punches holes elsewhere.

Each modifying request bumps the revision counter in memory; ``persist_revision()`` writes it to
``revision.counter`` (the server does that once per batch, before acknowledging the batch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from metalhorn.common import errors
from metalhorn.common.logs import kv
from metalhorn.storage import blockdev
from metalhorn.storage.chain import extents, meta
from metalhorn.storage.chain.extents import BLOCK_SIZE
from metalhorn.storage.replica import files

log = logging.getLogger(__name__)

CHECKSUM_CHUNK = 1 << 20


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _io(what: str) -> Iterator[None]:
    """Translate OSError at the boundary: ENOSPC -> NoSpace, anything else -> StorageIOError."""
    try:
        yield
    except OSError as exc:
        raise errors.from_oserror(exc, what) from exc


class ReplicaStore:
    """One replica directory opened for serving (or read-only for inspection). Not thread-safe except sync()."""

    def __init__(
        self,
        *,
        directory: str,
        volume: meta.VolumeMeta,
        disks: dict[str, meta.DiskMeta],
        chain: list[str],
        fds: list[int],
        extent_map: extents.ExtentMap,
        revision: int,
        revision_fd: int,
        lock_fd: int,
        readonly: bool,
    ) -> None:
        self._dir = directory
        self._volume = volume
        self._disks = disks
        self._chain = chain  # oldest first; the last one is the head
        self._fds = fds  # parallel to _chain
        self._map = extent_map
        self._revision = revision
        self._revision_fd = revision_fd
        self._revision_pending = False
        self._lock_fd = lock_fd
        self._readonly = readonly
        self._closed = False

    # -- opening ------------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], *, size: int | None = None, readonly: bool = False
    ) -> ReplicaStore:
        """Open the replica in `directory`, creating a new one of `size` bytes if the directory holds none.

        An existing replica is never re-initialised: missing or damaged metadata raises CorruptMetadata, and a
        `size` that disagrees with volume.meta raises InvalidArgument.
        """
        path = os.fspath(directory)
        if size is not None and (size <= 0 or size % meta.SECTOR_SIZE):
            raise errors.InvalidArgument(f"replica size {size} must be a positive multiple of {meta.SECTOR_SIZE}")
        if readonly:
            if not os.path.isfile(os.path.join(path, meta.VOLUME_META)):
                raise errors.NotFound(f"{path}: no replica here ({meta.VOLUME_META} is missing)")
            return cls._load(path, size=size, readonly=True, lock_fd=-1)
        with _io(f"creating replica directory {path}"):
            os.makedirs(path, exist_ok=True)
        lock_fd = cls._lock(path)
        try:
            if not os.path.exists(os.path.join(path, meta.VOLUME_META)):
                cls._create(path, size=size)
            return cls._load(path, size=size, readonly=False, lock_fd=lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @staticmethod
    def _lock(path: str) -> int:
        """Take an exclusive lock on the directory: two servers on one replica would corrupt it."""
        with _io(f"opening {path}"):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise errors.Conflict(f"{path}: another process has this replica open") from None
        return fd

    @staticmethod
    def _create(path: str, *, size: int | None) -> None:
        leftovers = sorted(
            name for name in os.listdir(path) if name.startswith("volume-") or name == meta.REVISION_COUNTER
        )
        if leftovers:
            raise errors.CorruptMetadata(
                f"{os.path.join(path, meta.VOLUME_META)}: missing, but the directory holds replica files "
                f"({', '.join(leftovers[:5])}); refusing to re-initialise it"
            )
        if size is None:
            raise errors.InvalidArgument(f"{path} holds no replica yet; give its size (--size) to create one")
        head = meta.head_file(0)
        with _io(f"creating {os.path.join(path, head)}"):
            fd = os.open(os.path.join(path, head), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        files.atomic_write(
            path, meta.meta_file(head), meta.DiskMeta(name=head, created=_now()).to_json(), sync_dir=False
        )
        files.atomic_write(path, meta.REVISION_COUNTER, meta.encode_revision(0), sync_dir=False)
        # volume.meta last: it is the commit point of creation.
        files.atomic_write(path, meta.VOLUME_META, meta.VolumeMeta(size=size, head=head).to_json())
        log.info("created replica %s", kv(dir=path, size=size, head=head))

    @classmethod
    def _load(cls, path: str, *, size: int | None, readonly: bool, lock_fd: int) -> ReplicaStore:
        volume = meta.VolumeMeta.from_json(
            files.read_small(path, meta.VOLUME_META), file=os.path.join(path, meta.VOLUME_META)
        )
        if size is not None and size != volume.size:
            raise errors.InvalidArgument(
                f"{path}: the replica holds {volume.size} bytes but --size asks for {size}; "
                "omit --size or give the same size (expansion is a separate operation)"
            )
        disks: dict[str, meta.DiskMeta] = {}
        for name in sorted(os.listdir(path)):
            if name.endswith(".img" + meta.DISK_META_SUFFIX):
                disk = name[: -len(meta.DISK_META_SUFFIX)]
                disks[disk] = meta.DiskMeta.from_json(files.read_small(path, name), file=os.path.join(path, name))
        try:
            chain = meta.chain(volume.head, disks)
        except errors.CorruptMetadata as exc:
            raise errors.CorruptMetadata(f"{path}/{exc.message}") from None
        revision = meta.decode_revision(
            files.read_small(path, meta.REVISION_COUNTER, limit=meta.REVISION_BLOCK),
            file=os.path.join(path, meta.REVISION_COUNTER),
        )
        flags = os.O_RDONLY if readonly else os.O_RDWR
        fds: list[int] = []
        try:
            for name in chain:
                try:
                    fds.append(os.open(os.path.join(path, name), flags))
                except FileNotFoundError:
                    raise errors.CorruptMetadata(
                        f"{os.path.join(path, name)}: missing, but it is in the chain ({meta.describe_chain(chain)})"
                    ) from None
            with _io(f"scanning extents in {path}"):
                layer_extents = [files.data_extents(fd, limit=volume.size) for fd in fds]
            extent_map = extents.ExtentMap.build(
                extents.blocks_for(volume.size), snapshots=layer_extents[:-1], head=layer_extents[-1]
            )
            with _io(f"opening {path}/{meta.REVISION_COUNTER}"):
                revision_fd = os.open(os.path.join(path, meta.REVISION_COUNTER), flags)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        store = cls(
            directory=path,
            volume=volume,
            disks=disks,
            chain=chain,
            fds=fds,
            extent_map=extent_map,
            revision=revision,
            revision_fd=revision_fd,
            lock_fd=lock_fd,
            readonly=readonly,
        )
        log.info(
            "opened replica %s",
            kv(dir=path, size=volume.size, head=volume.head, layers=len(chain), revision=revision, dirty=volume.dirty),
        )
        return store

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._volume.size

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def head(self) -> str:
        return self._volume.head

    @property
    def chain(self) -> list[str]:
        """Files of the live chain, oldest first, head last."""
        return list(self._chain)

    # -- hooks for history operations (replica/snapshots.py) ----------------------------------------------------

    @property
    def volume(self) -> meta.VolumeMeta:
        return self._volume

    @property
    def disks(self) -> dict[str, meta.DiskMeta]:
        """Metadata of every disk in the directory, also snapshots outside the live chain (a reverted branch)."""
        return dict(self._disks)

    @property
    def head_fd(self) -> int:
        return self._fds[-1]

    def head_runs(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        """Runs [(first_block, count, head_holds_it)] over blocks [first, first+count)."""
        return [(f, n, source == extents.HEAD) for f, n, source in self._map.runs(first, count)]

    def mark_head(self, first: int, count: int) -> None:
        """Record that the head file now holds these blocks (after a copy into it)."""
        self._map.mark_head(first, count)

    # -- data path ----------------------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes | bytearray:
        blockdev.check_range(self.size, offset, length)
        if length == 0:
            return b""
        first, count = extents.block_span(offset, length)
        runs = self._map.runs(first, count)
        if len(runs) == 1:
            source = runs[0][2]
            if source == extents.ZERO:
                return bytes(length)
            fd = self._fd_for(source)
            with _io(f"reading {self._chain[self._layer_index(source)]}"):
                data = os.pread(fd, length, offset)
            if len(data) < length:  # layer file shorter than the volume: the rest is a hole
                data += bytes(length - len(data))
            return data
        buf = bytearray(length)
        view = memoryview(buf)
        end = offset + length
        with _io(f"reading replica {self._dir}"):
            for run_first, run_count, source in runs:
                if source == extents.ZERO:
                    continue
                lo = max(offset, run_first * BLOCK_SIZE)
                hi = min(end, (run_first + run_count) * BLOCK_SIZE)
                files.pread_into(self._fd_for(source), view[lo - offset : hi - offset], lo)
        return buf

    def write(self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        self._check_writable()
        length = len(data)
        blockdev.check_range(self.size, offset, length)
        if length == 0:
            return
        first, count = extents.block_span(offset, length)
        start, end = offset, offset + length
        lo = first * BLOCK_SIZE
        hi = min((first + count) * BLOCK_SIZE, self.size)
        prefix: bytes | bytearray = b""
        suffix: bytes | bytearray = b""
        # Partial edge blocks that only a snapshot holds: copy the old bytes into the head with the new ones.
        if start > lo and self._needs_copy_up(first):
            prefix = self.read(lo, start - lo)
            start = lo
        last = first + count - 1
        if end < hi and self._needs_copy_up(last):
            suffix = self.read(end, hi - end)
            end = hi
        payload: bytes | bytearray | memoryview = data
        if prefix or suffix:
            payload = b"".join((prefix, data, suffix))
        self._mark_dirty()
        head_fd = self._fds[-1]
        try:  # not `with _io(...)`: a context manager per 4 KiB write is measurable on the hot path
            files.pwrite_all(head_fd, payload, start)
            if fua:
                os.fdatasync(head_fd)
        except OSError as exc:
            raise errors.from_oserror(exc, f"writing {self.head}") from exc
        self._map.mark_head(first, count)
        self._bump()

    def unmap(self, offset: int, length: int) -> None:
        """Discard whole blocks in the range where no snapshot holds them (advisory: partial blocks are kept)."""
        self._check_writable()
        blockdev.check_range(self.size, offset, length)
        first = -(-offset // BLOCK_SIZE)
        end = offset + length
        stop = self._map.nblocks if end == self.size else end // BLOCK_SIZE
        self._mark_dirty()
        if stop > first:
            head_fd = self._fds[-1]
            with _io(f"discarding in {self.head}"):
                for run_first, run_count, held in self._map.below_runs(first, stop - first):
                    if not held:
                        files.punch_hole(head_fd, run_first * BLOCK_SIZE, run_count * BLOCK_SIZE)
                        self._map.clear_head(run_first, run_count)
        self._bump()

    def write_zeroes(self, offset: int, length: int, *, no_hole: bool = False) -> None:
        """The range reads as zeros afterwards; holes only where no snapshot holds a block and holes are allowed."""
        self._check_writable()
        blockdev.check_range(self.size, offset, length)
        if length == 0:
            return
        end = offset + length
        first = -(-offset // BLOCK_SIZE)
        stop = self._map.nblocks if end == self.size else end // BLOCK_SIZE
        if stop <= first:  # inside one block: an ordinary write
            self.write(offset, bytes(length))
            return
        # Partial edge blocks become ordinary writes (bumping the revision like any write).
        if offset < first * BLOCK_SIZE:
            self.write(offset, bytes(first * BLOCK_SIZE - offset))
        if end > stop * BLOCK_SIZE:
            self.write(stop * BLOCK_SIZE, bytes(end - stop * BLOCK_SIZE))
        self._mark_dirty()
        head_fd = self._fds[-1]
        with _io(f"zeroing in {self.head}"):
            for run_first, run_count, held in self._map.below_runs(first, stop - first):
                lo = run_first * BLOCK_SIZE
                hi = min((run_first + run_count) * BLOCK_SIZE, self.size)
                if held or no_hole:
                    files.write_zeros(head_fd, lo, hi - lo)
                    self._map.mark_head(run_first, run_count)
                else:
                    files.punch_hole(head_fd, lo, hi - lo)
                    self._map.clear_head(run_first, run_count)
        self._bump()

    def persist_revision(self) -> bool:
        """Write the revision counter if it changed since the last call; True when it wrote."""
        if not self._revision_pending:
            return False
        with _io(f"writing {meta.REVISION_COUNTER}"):
            files.pwrite_all(self._revision_fd, meta.encode_revision(self._revision), 0)
        self._revision_pending = False
        return True

    def sync(self) -> None:
        """fsync the head and the revision counter. Safe to call from a worker thread."""
        if self._readonly or self._closed:
            return
        with _io(f"syncing {self._dir}"):
            os.fsync(self._fds[-1])
            os.fsync(self._revision_fd)

    def flush(self) -> None:
        """Make every write so far durable: persist the revision counter, then fsync."""
        self.persist_revision()
        self.sync()

    # -- control ------------------------------------------------------------------------------------------------

    def snapshot(
        self,
        name: str,
        *,
        user_created: bool = True,
        labels: dict[str, str] | None = None,
        created: str | None = None,
    ) -> str:
        """Freeze the head as volume-snap-<name>.img and start a new empty head. Returns the snapshot file.

        Crash safety: the new head and the snapshot link are made first; rewriting volume.meta is the commit
        point; the old head name is removed last. A crash before the commit leaves the old chain intact.
        """
        self._check_writable()
        snap = meta.snapshot_file(name)
        if os.path.exists(os.path.join(self._dir, snap)) or snap in self._disks:
            raise errors.AlreadyExists(f"snapshot {name} already exists in {self._dir}")
        old_head = self.head
        new_head = meta.next_head_file(old_head)
        created = created or _now()
        self.flush()
        path = self._dir
        new_path = os.path.join(path, new_head)
        with _io(f"creating {new_path}"):
            with contextlib.suppress(FileNotFoundError):  # an orphan of a snapshot that crashed before its commit
                os.unlink(new_path)
            fd = os.open(new_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with _io(f"creating {new_path}"):
                os.ftruncate(fd, self.size)
                os.fsync(fd)
            old_disk = self._disks[old_head]
            snap_disk = meta.DiskMeta(
                name=snap,
                parent=old_disk.parent,
                removed=False,
                user_created=user_created,
                created=created,
                labels=dict(labels or {}),
            )
            head_disk = meta.DiskMeta(name=new_head, parent=snap, created=created)
            files.atomic_write(path, meta.meta_file(new_head), head_disk.to_json(), sync_dir=False)
            with _io(f"linking {snap}"):
                os.link(os.path.join(path, old_head), os.path.join(path, snap))
            files.atomic_write(path, meta.meta_file(snap), snap_disk.to_json(), sync_dir=False)
            volume = dataclasses.replace(self._volume, head=new_head, parent=snap, dirty=True)
            files.atomic_write(path, meta.VOLUME_META, volume.to_json())
        except BaseException:
            os.close(fd)
            raise
        # Committed. The old head name goes; its data lives on as the snapshot (same inode, fd stays open).
        self._volume = volume
        del self._disks[old_head]
        self._disks[snap] = snap_disk
        self._disks[new_head] = head_disk
        self._chain[-1] = snap
        self._chain.append(new_head)
        self._fds.append(fd)
        self._map.snapshot()
        with _io(f"removing old head {old_head}"):
            for stale in (old_head, meta.meta_file(old_head)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, stale))
            files.fsync_dir(path)
        log.info("snapshot %s", kv(dir=path, snapshot=snap, head=new_head, layers=len(self._chain)))
        return snap

    def info(self) -> dict[str, Any]:
        """State for the engine and `replica inspect`: `chain` is the file names oldest first (head last);
        `layers` gives each file's metadata with apparent size and allocated bytes."""
        layers = []
        for name in self._chain:
            disk = self._disks[name]
            with _io(f"stat {name}"):
                st = os.stat(os.path.join(self._dir, name))
            layers.append(
                {
                    "name": name,
                    "parent": disk.parent,
                    "size": st.st_size,
                    "allocated": st.st_blocks * 512,
                    "removed": disk.removed,
                    "user_created": disk.user_created,
                    "created": disk.created,
                    "labels": dict(disk.labels),
                }
            )
        return {
            "dir": self._dir,
            "size": self.size,
            "head": self.head,
            "parent": self._volume.parent,
            "dirty": self._volume.dirty,
            "rebuilding": self._volume.rebuilding,
            "error": self._volume.error,
            "sector_size": self._volume.sector_size,
            "revision": self._revision,
            "chain": list(self._chain),
            "layers": layers,
        }

    def checksum(self) -> str:
        """SHA-256 of the logical volume content read through the chain (to compare replicas)."""
        digest = hashlib.sha256()
        for offset in range(0, self.size, CHECKSUM_CHUNK):
            digest.update(self.read(offset, min(CHECKSUM_CHUNK, self.size - offset)))
        return digest.hexdigest()

    def reload_chain(self) -> None:
        """Hook for history operations (replica/snapshots.py): re-read metadata and extents after they changed files.

        Synchronous, so no request runs in between. Files that stay in the chain keep their descriptor (a FLUSH
        in a worker thread may be using the head's); only descriptors of files that left the chain are closed.
        """
        self._check_writable()
        self.persist_revision()
        fresh = ReplicaStore._load(self._dir, size=None, readonly=False, lock_fd=-1)
        old = dict(zip(self._chain, self._fds, strict=True))
        fds = []
        for name, fd in zip(fresh._chain, fresh._fds, strict=True):
            kept = old.pop(name, None)
            if kept is None:
                fds.append(fd)
            else:
                os.close(fd)
                fds.append(kept)
        for fd in (*old.values(), fresh._revision_fd):
            os.close(fd)
        self._volume, self._disks, self._chain = fresh._volume, fresh._disks, fresh._chain
        self._fds, self._map = fds, fresh._map

    def close(self) -> None:
        """Flush, mark the replica clean (Dirty=false) and release the files. Idempotent."""
        if self._closed:
            return
        try:
            if not self._readonly:
                self.flush()
                if self._volume.dirty:
                    clean = dataclasses.replace(self._volume, dirty=False)
                    files.atomic_write(self._dir, meta.VOLUME_META, clean.to_json())
                    self._volume = clean
        finally:
            self._closed = True
            for fd in (*self._fds, self._revision_fd):
                os.close(fd)
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            log.info("closed replica %s", kv(dir=self._dir, revision=self._revision))

    # -- helpers ------------------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise errors.StorageIOError(f"replica {self._dir} is closed")
        if self._readonly:
            raise errors.NotSupported(f"replica {self._dir} is open read-only")

    def _needs_copy_up(self, block: int) -> bool:
        return not self._map.head_allocated(block) and self._map.held_below_head(block)

    def _layer_index(self, source: int) -> int:
        return len(self._fds) - 1 if source == extents.HEAD else source - 1

    def _fd_for(self, source: int) -> int:
        return self._fds[self._layer_index(source)]

    def _mark_dirty(self) -> None:
        if not self._volume.dirty:
            dirty = dataclasses.replace(self._volume, dirty=True)
            files.atomic_write(self._dir, meta.VOLUME_META, dirty.to_json())
            self._volume = dirty

    def _bump(self) -> None:
        self._revision += 1
        self._revision_pending = True
