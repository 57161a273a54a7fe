"""Replica side of a rebuild: receive a snapshot chain file by file while taking the volume's new writes.

The engine drives it (storage/engine/rebuild.py); every step is a request on the replica protocol:

- ``sync_map`` (on the healthy source): its extent map's snapshot layers, so the new replica decides every later
  TRIM / WRITE_ZEROES exactly as the source does (allocation decides the chain; a guess would make them differ).
- ``sync_prepare`` (on the replica being rebuilt): lay out the source's chain -- the snapshot files with the same
  names and metadata, reusing files it already has (its old head becomes the base of the newest snapshot, which
  usually is the system snapshot the engine just took), empty sparse files for the rest -- plus a fresh empty head,
  with ``Rebuilding=true`` in volume.meta. An engine that dies now leaves a replica that no engine will trust.
- FILE_CHECKSUM / FILE_READ / FILE_WRITE frames: per-2 MiB digests and data extents of one snapshot file
  (storage/wire/filesync.py). They run in worker threads: snapshot files are frozen on the source, and on the
  target only the rebuild writes them, while the data path writes the head.
- ``sync_finish``: merge the partial-block writes noted during the rebuild, take the source's revision counter,
  ``Rebuilding=false``.
- ``sync_trusted``: the engine chose this replica as a reference at start; forget that it was opened unclean.

Partial-block writes during a rebuild: a write that covers part of a 4 KiB block the head does not hold copies the
rest of the block up from the snapshot layers -- which may not have arrived yet. So such blocks are noted with a
byte mask of what the volume's writes put there, and ``sync_finish`` re-merges them with the complete snapshot data.

``unclean``: the replica was opened with Dirty=true, i.e. its process died while serving. Its head may then hold
data of a batch whose revision counter never reached the disk, so at equal revision it may differ from a clean
peer; engine start-up (policy.at_start) uses this to decide whom to trust.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import logging
import os
import zlib
from typing import TYPE_CHECKING, Any

from metalhorn.common import errors
from metalhorn.common.logs import kv
from metalhorn.storage.chain import extents, meta
from metalhorn.storage.chain.extents import BLOCK_SIZE
from metalhorn.storage.replica import files
from metalhorn.storage.replica.store import ReplicaStore
from metalhorn.storage.wire import codec, filesync

if TYPE_CHECKING:
    from metalhorn.storage.replica.server import ReplicaServer

log = logging.getLogger(__name__)

MAX_RANGE = 32 << 20  # largest FILE_READ/FILE_WRITE range
MAX_CHECKSUM_RANGE = codec.MAX_LENGTH  # FILE_CHECKSUM: 16 digests per request at most

_ONES = b"\x01" * BLOCK_SIZE


class ReplicaSync:
    """Rebuild operations of one ReplicaServer (the server holds one; the store it serves may change under it)."""

    def __init__(self, server: ReplicaServer) -> None:
        self._server = server
        self.unclean = bool(server.store.info()["dirty"])
        # Partial-block writes during a rebuild: block -> byte mask (1 = written by the volume). None: no rebuild.
        self.masks: dict[int, bytearray] | None = None

    @property
    def rebuilding(self) -> bool:
        return self.masks is not None

    # -- CONTROL ops ------------------------------------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "sync_map":
            return self._snap_map()
        if op == "sync_prepare":
            return self._prepare(request)
        if op == "sync_finish":
            revision = request.get("revision")
            if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
                raise errors.InvalidArgument('sync_finish needs an integer "revision" >= 0')
            return self._finish(revision)
        if op == "sync_trusted":
            self.unclean = False
            return {"unclean": False}
        raise errors.NotSupported(f"unknown CONTROL op {op!r}")

    def _snap_map(self) -> dict[str, Any]:
        store = self._server.store
        emap = store._map
        return {
            "chain": store.chain,
            "layers": emap.layers,
            "map": base64.b64encode(zlib.compress(bytes(emap._snap), 1)).decode(),
        }

    def _prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        store = self._server.store
        plan = _Plan.parse(request, size=store.size)
        path = store.directory
        old_chain, old_head = store.chain, store.head
        if not store._closed:  # closed already when an earlier prepare failed half-way (e.g. ENOSPC): retry
            store.flush()
            for fd in (*store._fds, store._revision_fd):
                os.close(fd)
            store._closed = True  # until the new layout is loaded: any I/O now fails instead of using stale fds
        # Commit point one: from here on no engine trusts this replica until sync_finish.
        files.atomic_write(
            path, meta.VOLUME_META, dataclasses.replace(store._volume, rebuilding=True, dirty=True).to_json()
        )
        present = set(os.listdir(path))
        reused, created = [], []
        newest = plan.snapshots[-1].name if plan.snapshots else ""
        try:
            if newest and newest not in present and old_head in present:
                os.rename(os.path.join(path, old_head), os.path.join(path, newest))
                present.add(newest)
                present.discard(old_head)
            for snap in plan.snapshots:
                target = os.path.join(path, snap.name)
                if snap.name in present:
                    reused.append(snap.name)
                    os.truncate(target, store.size)
                else:
                    _create_sparse(target, store.size)
                    created.append(snap.name)
                files.atomic_write(path, meta.meta_file(snap.name), snap.to_json(), sync_dir=False)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target + meta.CHECKSUM_SUFFIX)  # the content changes: an old checksum would lie
            head_path = os.path.join(path, plan.head)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(head_path)
            _create_sparse(head_path, store.size)
            head_disk = meta.DiskMeta(name=plan.head, parent=newest, created=plan.created)
            files.atomic_write(path, meta.meta_file(plan.head), head_disk.to_json(), sync_dir=False)
            keep = {d.name for d in plan.snapshots} | {plan.head}
            for name in present:
                disk = name.split(".img", 1)[0] + ".img"
                if name.startswith("volume-") and ".img" in name and disk not in keep:
                    os.unlink(os.path.join(path, name))
            files.fsync_dir(path)
        except OSError as exc:
            raise errors.from_oserror(exc, f"preparing {path} for a rebuild") from exc
        volume = dataclasses.replace(store._volume, head=plan.head, parent=newest, rebuilding=True, dirty=True)
        files.atomic_write(path, meta.VOLUME_META, volume.to_json())  # commit point two: the new layout
        self._load(store, volume=volume, plan=plan)
        self.masks = {}
        log.info(
            "rebuild prepared %s",
            kv(dir=path, old=meta.describe_chain(old_chain), new=meta.describe_chain(store.chain), reused=len(reused)),
        )
        return {"reused": reused, "created": created, "head": plan.head, "chain": store.chain}

    def _load(self, store: ReplicaStore, *, volume: meta.VolumeMeta, plan: _Plan) -> None:
        """Point the (same) store object at the new layout; its extent map is the source's, not a file scan.

        The same object, because the server, its connections and the daemon that closes it all hold it; and no file
        scan, because the snapshot files are still being filled (and a scan of big files would stall the volume).
        """
        path = store.directory
        chain = [d.name for d in plan.snapshots] + [plan.head]
        fds: list[int] = []
        try:
            for name in chain:
                fds.append(os.open(os.path.join(path, name), os.O_RDWR))
            revision_fd = os.open(os.path.join(path, meta.REVISION_COUNTER), os.O_RDWR)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise errors.from_oserror(exc, f"opening the rebuilt chain in {path}") from exc
        emap = extents.ExtentMap(extents.blocks_for(store.size))
        emap._snap[:] = plan.snap_map
        emap._layers = len(plan.snapshots)
        disks = {d.name: d for d in plan.snapshots}
        parent = chain[-2] if len(chain) > 1 else ""
        disks[plan.head] = meta.DiskMeta(name=plan.head, parent=parent, created=plan.created)
        fresh = ReplicaStore(
            directory=path,
            volume=volume,
            disks=disks,
            chain=chain,
            fds=fds,
            extent_map=emap,
            revision=store.revision,
            revision_fd=revision_fd,
            lock_fd=store._lock_fd,
            readonly=False,
        )
        vars(store).update(vars(fresh))

    def _finish(self, revision: int) -> dict[str, Any]:
        store = self._server.store
        if self.masks is None:
            raise errors.InvalidArgument(f"replica {store.directory} is not being rebuilt")
        merged = self._merge_partial_blocks(store, self.masks)
        store._revision = revision
        store._revision_pending = True
        store.flush()
        for fd in store._fds[:-1]:
            os.fsync(fd)  # the snapshot files were written through other descriptors; make them durable too
        volume = dataclasses.replace(store._volume, rebuilding=False, dirty=True)
        files.atomic_write(store.directory, meta.VOLUME_META, volume.to_json())
        store._volume = volume
        self.masks = None
        self.unclean = False
        log.info("rebuild finished %s", kv(dir=store.directory, revision=revision, merged_blocks=merged))
        return {"revision": revision, "merged_blocks": merged}

    @staticmethod
    def _merge_partial_blocks(store: ReplicaStore, masks: dict[int, bytearray]) -> int:
        """Redo the copy-up of blocks written in part during the rebuild, now that the snapshot data is complete."""
        emap = store._map
        head_fd = store._fds[-1]
        merged = 0
        for block in sorted(masks):
            mask = masks[block]
            layer = emap._snap[block]
            if not emap.head_allocated(block) or layer == 0:
                continue  # trimmed since, or nothing below to merge
            lo = block * BLOCK_SIZE
            size = min(BLOCK_SIZE, store.size - lo)
            head = os.pread(head_fd, size, lo)
            out = bytearray(os.pread(store._fds[layer - 1], size, lo).ljust(size, b"\x00"))
            pos = 0
            while pos < size:
                start = mask.find(1, pos, size)
                if start < 0:
                    break
                stop = mask.find(0, start, size)
                stop = size if stop < 0 else stop
                out[start:stop] = head[start:stop]
                pos = stop
            files.pwrite_all(head_fd, out, lo)
            merged += 1
        return merged

    # -- the data path while rebuilding ------------------------------------------------------------------------

    def note_write(self, offset: int, length: int) -> None:
        """Called before a WRITE / WRITE_ZEROES runs during a rebuild: keep the partial-block masks up to date."""
        masks = self.masks
        if masks is None or length <= 0:
            return
        store = self._server.store
        emap = store._map
        size = store.size
        end = offset + length
        first, count = extents.block_span(offset, length)
        last = first + count - 1
        if masks and count > 2:
            for block in [b for b in masks if first < b < last]:
                del masks[block]  # fully written now
        for block in {first, last}:
            lo = block * BLOCK_SIZE
            start, stop = max(offset, lo) - lo, min(end, lo + BLOCK_SIZE) - lo
            if start == 0 and stop >= min(BLOCK_SIZE, size - lo):
                masks.pop(block, None)
                continue
            mask = masks.get(block)
            if mask is None:
                if emap.head_allocated(block) or not emap.held_below_head(block):
                    continue  # no copy-up happens: the store writes just these bytes
                mask = masks[block] = bytearray(BLOCK_SIZE)
            mask[start:stop] = _ONES[: stop - start]

    # -- FILE_* frames (run in a worker thread) ------------------------------------------------------------------

    def submit(self, frame: codec.Frame) -> asyncio.Future[bytes]:
        """Run one FILE_* request in a worker thread; the future's result is the reply payload."""
        store = self._server.store
        kind = frame.type
        if kind == codec.FrameType.FILE_WRITE:
            name, body = filesync.split_write_payload(frame.payload)
            if not self.rebuilding or name not in store.chain[:-1]:
                raise errors.InvalidArgument(f"FILE_WRITE to {name}: not a snapshot file of a replica being rebuilt")
            path = self._path(store, name, limit=MAX_RANGE, offset=frame.offset, length=frame.length)
            return _in_thread(_write_range, path, frame.offset, frame.length, body)
        name = filesync.decode_name(frame.payload)
        if kind == codec.FrameType.FILE_READ:
            path = self._path(store, name, limit=MAX_RANGE, offset=frame.offset, length=frame.length)
            return _in_thread(_read_range, path, frame.offset, frame.length)
        path = self._path(store, name, limit=MAX_CHECKSUM_RANGE, offset=frame.offset, length=frame.length)
        return _in_thread(_checksum_range, path, frame.offset, frame.length)

    @staticmethod
    def _path(store: ReplicaStore, name: str, *, limit: int, offset: int, length: int) -> str:
        if name not in store.chain[:-1]:
            raise errors.NotFound(f"{name} is not a snapshot file of {store.directory} ({store.chain})")
        if length > limit or offset % BLOCK_SIZE or offset + length > store.size:
            raise errors.OutOfRange(f"file range ({offset}, {length}) not aligned, too long or past {store.size}")
        return os.path.join(store.directory, name)


# -- worker-thread functions --------------------------------------------------------------------------------------


def _in_thread(func: Any, *args: Any) -> asyncio.Future[bytes]:
    future: asyncio.Future[bytes] = asyncio.get_running_loop().run_in_executor(None, func, *args)
    return future


def extents_in(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Allocated byte extents [(offset, length)] of a file within [start, end), via SEEK_DATA/SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        out.append((data, hole - data))
        pos = hole
    return out


def _read_range(path: str, offset: int, length: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            found = extents_in(fd, offset, offset + length)
            if not found:
                return filesync.body_header([])
            lo = found[0][0]
            hi = found[-1][0] + found[-1][1]
            data = memoryview(os.pread(fd, hi - lo, lo))
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.from_oserror(exc, f"reading {path}") from exc
    data = memoryview(bytes(data).ljust(hi - lo, b"\x00")) if len(data) < hi - lo else data
    rel = [(at - offset, n) for at, n in found]
    return b"".join([filesync.body_header(rel), *(data[at - lo : at - lo + n] for at, n in found)])


def _write_range(path: str, offset: int, length: int, body: memoryview) -> bytes:
    rel, data = filesync.decode_body(body, range_length=length)
    end = offset + length
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            holes = bool(extents_in(fd, offset, end))  # an empty range needs no hole punching
            pos = 0
            cursor = offset
            for at, n in rel:
                start = offset + at
                if holes and start > cursor:
                    files.punch_hole(fd, cursor, start - cursor)
                files.pwrite_all(fd, data[pos : pos + n], start)
                pos += n
                cursor = start + n
            if holes and end > cursor:
                files.punch_hole(fd, cursor, end - cursor)
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.from_oserror(exc, f"writing {path}") from exc
    return b""


def _checksum_range(path: str, offset: int, length: int) -> bytes:
    out = []
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            end = offset + length
            found = extents_in(fd, offset, end)
            index = 0
            for lo in range(offset, end, filesync.SYNC_BLOCK):
                hi = min(lo + filesync.SYNC_BLOCK, end)
                mine = []
                while index < len(found) and found[index][0] < hi:
                    at, n = found[index]
                    a, b = max(at, lo), min(at + n, hi)
                    if b > a:
                        mine.append((a - lo, b - a))
                    if at + n > hi:
                        break
                    index += 1
                data = [os.pread(fd, n, lo + at).ljust(n, b"\x00") for at, n in mine]
                out.append(filesync.block_digest(mine, data, block_length=hi - lo))
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.from_oserror(exc, f"checksumming {path}") from exc
    return b"".join(out)


def _create_sparse(path: str, size: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


# -- the prepare request ------------------------------------------------------------------------------------------


def _disk(item: object) -> meta.DiskMeta:
    """A chain item of sync_prepare: a layer as the source's CONTROL info lists it."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise errors.InvalidArgument("sync_prepare chain items must be objects with a string name")
    labels = item.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise errors.InvalidArgument("sync_prepare chain item labels must map strings to strings")
    return meta.DiskMeta(
        name=item["name"],
        parent=str(item.get("parent") or ""),
        removed=bool(item.get("removed", False)),
        user_created=bool(item.get("user_created", False)),
        created=str(item.get("created") or ""),
        labels=labels,
    )


@dataclasses.dataclass(frozen=True)
class _Plan:
    snapshots: tuple[meta.DiskMeta, ...]  # oldest first, Parent links as on the source
    head: str
    created: str
    snap_map: bytes

    @classmethod
    def parse(cls, request: dict[str, Any], *, size: int) -> _Plan:
        if request.get("size") != size:
            raise errors.InvalidArgument(f"rebuild source has size {request.get('size')}, this replica {size}")
        raw = request.get("chain")
        head = request.get("head")
        if not isinstance(raw, list) or not isinstance(head, str) or meta.head_index(head) is None:
            raise errors.InvalidArgument('sync_prepare needs "chain" (a list) and "head" (volume-head-NNN.img)')
        snapshots = []
        parent = ""
        for item in raw:
            disk = _disk(item)
            if meta.snapshot_name(disk.name) is None or disk.parent != parent:
                raise errors.InvalidArgument(f"sync_prepare: {disk.name!r} is not a snapshot file after {parent!r}")
            snapshots.append(disk)
            parent = disk.name
        try:
            snap_map = zlib.decompress(base64.b64decode(str(request.get("map", ""))))
        except (ValueError, zlib.error) as exc:
            raise errors.InvalidArgument(f"sync_prepare map is not base64 zlib: {exc}") from None
        if len(snap_map) != extents.blocks_for(size) or (snap_map and max(snap_map) > len(snapshots)):
            raise errors.InvalidArgument("sync_prepare map does not fit the volume and the chain")
        created = request.get("created")
        return cls(
            snapshots=tuple(snapshots),
            head=head,
            created=created if isinstance(created, str) else "",
            snap_map=snap_map,
        )
