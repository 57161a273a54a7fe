"""A replica's history: the snapshot tree, remove, purge (fold), revert, expand and block checksums.

The replica server hands every CONTROL op named ``snap.*`` to `ReplicaHistory.handle`. Like the store, the quick
ops run synchronously on the server's event loop, in frame order with the data path; so a snapshot sits at the
same point of the write stream on every replica the engine sends it to. Slow work is cut up or moved off the loop:

- **purge** folds a removed snapshot X into its only child C, chunk by chunk (``snap.fold`` copies at most
  `FOLD_BUDGET` bytes per request, so I/O keeps flowing between chunks), then ``snap.fold_commit`` relinks C to X's
  parent and deletes X. A block is copied only where C holds nothing -- for the head that is checked in the extent
  map at the moment of the copy, so a block the head wrote meanwhile is never overwritten. A copy never changes
  what any layer reads (X's block was already visible through C), so a crash mid-fold leaves a valid chain and the
  purge simply runs again.
- **checksums** (`.img.checksum`, see storage/chain/checksum.py) are computed in a worker thread over the immutable
  snapshot file. A fold into snapshot C first deletes C's record and re-hashes C after the commit; a lock keeps a
  hash job from recording a file that a fold touched while it was hashing.

Longhorn's rules we follow: the head cannot be removed; remove only marks ``Removed``; purge also removes system
(not user-created) snapshots; a snapshot with several children (a branch left by a revert) cannot be folded and
stays marked; revert keeps later snapshots as a branch of the tree; at most 250 snapshots in the live chain.
Unlike Longhorn, a removed snapshot whose child is the head IS folded (into the head): the single-threaded replica
makes that safe under I/O, and it frees the space Longhorn can only "prune".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from metalhorn.common import errors
from metalhorn.common.logs import kv
from metalhorn.storage.chain import checksum, extents, meta
from metalhorn.storage.chain.extents import BLOCK_SIZE
from metalhorn.storage.replica import files
from metalhorn.storage.replica.store import ReplicaStore

log = logging.getLogger(__name__)

OP_PREFIX = "snap."
MAX_SNAPSHOTS = 250
FOLD_BUDGET = 8 << 20


# -- pure: the tree and the purge plan ----------------------------------------------------------------------------


def tree(disks: Mapping[str, meta.DiskMeta], *, head: str, chain: Sequence[str]) -> list[dict[str, Any]]:
    """Every disk (snapshots and the head) with its parent, children and flags, oldest first by creation.

    Children are derived from Parent links; `in_chain` tells whether the disk is part of what the volume reads.
    """
    children: dict[str, list[str]] = {name: [] for name in disks}
    for name, disk in disks.items():
        if disk.parent in children:
            children[disk.parent].append(name)
    live = set(chain)
    out = []
    for name in sorted(disks, key=lambda n: (disks[n].created, n != head, n)):
        disk = disks[name]
        out.append(
            {
                "name": meta.snapshot_name(name) or name,
                "file": name,
                "parent": meta.snapshot_name(disk.parent) or disk.parent,
                "children": sorted(meta.snapshot_name(c) or c for c in children[name]),
                "removed": disk.removed,
                "user_created": disk.user_created,
                "created": disk.created,
                "labels": dict(disk.labels),
                "head": name == head,
                "in_chain": name in live,
            }
        )
    return out


def purge_plan(disks: Mapping[str, meta.DiskMeta], *, head: str) -> tuple[str, str] | None:
    """The next (removed snapshot, its only child) to fold, newest first; child "" means delete it outright.

    Newest first, so a run of removed snapshots is folded into the surviving child one by one and each block is
    copied once. A removed snapshot with two or more children is skipped (Longhorn keeps it too).
    """
    children: dict[str, list[str]] = {name: [] for name in disks}
    for name, disk in disks.items():
        if disk.parent in children:
            children[disk.parent].append(name)
    candidates = [name for name, disk in disks.items() if name != head and disk.removed and len(children[name]) <= 1]
    if not candidates:
        return None
    newest = max(candidates, key=lambda n: (disks[n].created, n))
    kids = children[newest]
    return newest, kids[0] if kids else ""


def snapshot_file(name: str) -> str:
    """Accept a snapshot by name ("a") or by file name ("volume-snap-a.img")."""
    if meta.snapshot_name(name) or meta.head_index(name) is not None:
        return name
    return meta.snapshot_file(name)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- checksums of one file (run in worker threads) ----------------------------------------------------------------


def hash_file(path: str) -> checksum.HashInfo:
    """Block digests of a snapshot file; holes are not read. change_time is the file's ctime before hashing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise errors.from_oserror(exc, f"opening {path}") from exc
    try:
        st = os.fstat(fd)
        size = st.st_size
        data = checksum.blocks_with_data(files.data_extents(fd, limit=size), size)
        blocks = []
        for index, has_data in enumerate(data):
            offset = index * checksum.BLOCK_SIZE
            length = min(checksum.BLOCK_SIZE, size - offset)
            if not has_data:
                blocks.append(checksum.zero_digest(length))
                continue
            buf = bytearray(length)
            files.pread_into(fd, memoryview(buf), offset)
            blocks.append(checksum.block_digest(buf))
    except OSError as exc:
        raise errors.from_oserror(exc, f"hashing {path}") from exc
    finally:
        os.close(fd)
    return checksum.HashInfo.of_blocks(
        blocks, change_time=checksum.format_time(st.st_ctime_ns), last_hashed_at=checksum.format_time(time.time_ns())
    )


def checksum_file(disk: str) -> str:
    return disk + meta.CHECKSUM_SUFFIX


def read_checksum(directory: str, disk: str) -> checksum.HashInfo | None:
    path = os.path.join(directory, checksum_file(disk))
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 22)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.from_oserror(exc, f"reading {path}") from exc
    return checksum.HashInfo.from_json(data, file=path)


# -- the server-side object ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Fold:
    snapshot: str
    child: str


class ReplicaHistory:
    """History ops on one served ReplicaStore. `handle` returns a JSON-able dict, or a future of one (slow ops)."""

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store
        self._lock = threading.Lock()  # fold copies vs. recording a checksum
        self._touched: set[str] = set()  # files a fold wrote into since their last hash started
        self._fold: _Fold | None = None

    # -- dispatch ---------------------------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        op = str(request.get("op", ""))
        handler = {
            "snap.create": self._create,
            "snap.list": self._list,
            "snap.remove": self._remove,
            "snap.remove_system": self._remove_system,
            "snap.purge_next": self._purge_next,
            "snap.fold": self._fold_step,
            "snap.fold_commit": self._fold_commit,
            "snap.revert": self._revert,
            "snap.expand": self._expand,
        }.get(op)
        if handler is not None:
            return handler(request)
        if op == "snap.verify":
            return self._in_thread(self.verify)
        if op == "snap.hash":
            disk = _string(request, "file")
            return self._in_thread(lambda: {"file": disk, "recorded": self.record_checksum(disk)})
        raise errors.NotSupported(f"unknown CONTROL op {op!r}")

    def _in_thread(self, func: Any) -> asyncio.Future[dict[str, Any]]:
        return asyncio.get_running_loop().run_in_executor(None, func)

    def _hash_later(self, disk: str) -> None:
        """Record a snapshot's checksum in the background; a failure is only logged (verify records it later)."""
        future = asyncio.get_running_loop().run_in_executor(None, self.record_checksum, disk)

        def done(fut: asyncio.Future[bool]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                log.warning("%s", kv(dir=self.store.directory, file=disk, event="hash failed", error=fut.exception()))

        future.add_done_callback(done)

    # -- create / list / remove -------------------------------------------------------------------------------

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        name = _string(request, "name")
        labels = request.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise errors.InvalidArgument('snapshot "labels" must map strings to strings')
        layers = len(store.chain) - 1
        if layers >= MAX_SNAPSHOTS:
            raise errors.NotSupported(
                f"volume already has {layers} snapshots (at most {MAX_SNAPSHOTS}); remove some and purge first"
            )
        created = request.get("created")
        snap = store.snapshot(
            name,
            user_created=bool(request.get("user_created", True)),
            labels=labels,
            created=created if isinstance(created, str) else None,
        )
        self._hash_later(snap)
        return {"snapshot": snap, "head": store.head, "chain": store.chain}

    def _list(self, _request: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        disks = store.disks
        entries = tree(disks, head=store.head, chain=store.chain)
        for entry in entries:
            path = os.path.join(store.directory, entry["file"])
            try:
                st = os.stat(path)
            except FileNotFoundError:
                entry["size"] = entry["allocated"] = 0
                continue
            entry["size"] = st.st_blocks * 512  # Longhorn's "size" of a snapshot is its actual (allocated) size
            entry["allocated"] = st.st_blocks * 512
            record = read_checksum(store.directory, entry["file"]) if not entry["head"] else None
            entry["checksum"] = record.checksum if record is not None else ""
        return {"volume_size": store.size, "head": store.head, "snapshots": entries}

    def _remove(self, request: dict[str, Any]) -> dict[str, Any]:
        disk = snapshot_file(_string(request, "name"))
        self._mark_removed([disk])
        return {"removed": [disk]}

    def _remove_system(self, _request: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        system = [n for n, d in store.disks.items() if n != store.head and not d.user_created and not d.removed]
        self._mark_removed(system)
        return {"removed": system}

    def _mark_removed(self, disks: Sequence[str]) -> None:
        store = self.store
        known = store.disks
        for disk in disks:
            if disk == store.head or meta.head_index(disk) is not None:
                raise errors.InvalidArgument(f"{disk} is the volume head; only snapshots can be removed")
            if disk not in known:
                raise errors.NotFound(f"snapshot {meta.snapshot_name(disk) or disk} does not exist")
        for disk in disks:
            updated = dataclasses.replace(known[disk], removed=True)
            files.atomic_write(store.directory, meta.meta_file(disk), updated.to_json())
        if disks:
            store.reload_chain()

    # -- purge ------------------------------------------------------------------------------------------------

    def _purge_next(self, _request: dict[str, Any]) -> dict[str, Any]:
        plan = purge_plan(self.store.disks, head=self.store.head)
        if plan is None:
            return {"snapshot": None, "child": ""}
        return {"snapshot": plan[0], "child": plan[1]}

    def _check_fold(self, snap: str, child: str) -> None:
        disks = self.store.disks
        if snap not in disks or not disks[snap].removed:
            raise errors.Conflict(f"{snap} is not a removed snapshot of this replica")
        if child and (child not in disks or disks[child].parent != snap):
            raise errors.Conflict(f"{child} is not the child of {snap}")

    def _fold_step(self, request: dict[str, Any]) -> dict[str, Any]:
        """Copy up to `budget` bytes of X's data into its child where the child holds nothing; returns `next`."""
        store = self.store
        snap, child = _string(request, "snapshot"), str(request.get("child") or "")
        start = _int(request, "start")
        budget = min(_int(request, "budget", FOLD_BUDGET), 64 << 20)
        self._check_fold(snap, child)
        if not child:
            return {"next": -1, "copied": 0}
        directory = store.directory
        with self._lock:
            if child != store.head and start == 0:
                # The child's content changes: its old record would flag our own copy as corruption.
                self._touched.add(child)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, checksum_file(child)))
            src = os.open(os.path.join(directory, snap), os.O_RDONLY)
            dst = store.head_fd if child == store.head else os.open(os.path.join(directory, child), os.O_RDWR)
            try:
                limit = min(os.fstat(src).st_size, store.size)
                pieces, nxt = _extents_from(src, start, limit, budget)
                copied = 0
                for offset, length in pieces:
                    for lo, hi in self._child_holes(dst, child, offset, offset + length):
                        data = os.pread(src, hi - lo, lo)
                        files.pwrite_all(dst, data, lo)
                        copied += len(data)
                        if child == store.head:
                            first, count = extents.block_span(lo, hi - lo)
                            store.mark_head(first, count)
            except OSError as exc:
                raise errors.from_oserror(exc, f"folding {snap} into {child}") from exc
            finally:
                os.close(src)
                if child != store.head:
                    os.close(dst)
        return {"next": nxt, "copied": copied}

    def _child_holes(self, fd: int, child: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """Byte ranges in [lo, hi) (block-aligned) where `child` holds no data."""
        store = self.store
        first, count = extents.block_span(lo, hi - lo)
        if child == store.head:
            runs = [(f, n) for f, n, held in store.head_runs(first, count) if not held]
            return [(max(f * BLOCK_SIZE, lo), min((f + n) * BLOCK_SIZE, hi)) for f, n in runs]
        out = []
        pos = first * BLOCK_SIZE
        end = hi
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                data = end
            if data > pos:
                out.append((pos, min(data, end)))
            if data >= end:
                break
            pos = os.lseek(fd, data, os.SEEK_HOLE)
        return out

    def _fold_commit(self, request: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        snap, child = _string(request, "snapshot"), str(request.get("child") or "")
        self._check_fold(snap, child)
        directory = store.directory
        disks = store.disks
        parent = disks[snap].parent
        if child:
            files.atomic_write(
                directory, meta.meta_file(child), dataclasses.replace(disks[child], parent=parent).to_json()
            )
            if child == store.head:
                files.atomic_write(
                    directory, meta.VOLUME_META, dataclasses.replace(store.volume, parent=parent).to_json()
                )
        for stale in (snap, meta.meta_file(snap), checksum_file(snap)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, stale))
        files.fsync_dir(directory)
        store.reload_chain()
        if child and child != store.head:
            self._hash_later(child)
        log.info("purged snapshot %s", kv(dir=directory, snapshot=snap, into=child or "-"))
        return {"purged": snap, "into": child}

    # -- revert and expand (the engine allows revert only without a frontend) -------------------------------------

    def _revert(self, request: dict[str, Any]) -> dict[str, Any]:
        revert(self.store, snapshot_file(_string(request, "name")))
        return {"head": self.store.head, "chain": self.store.chain}

    def _expand(self, request: dict[str, Any]) -> dict[str, Any]:
        expand(self.store, _int(request, "size"))
        return {"size": self.store.size}

    # -- checksums --------------------------------------------------------------------------------------------

    def record_checksum(self, disk: str) -> bool:
        """Hash `disk` and write its `.img.checksum` unless a fold touched it meanwhile. True when recorded."""
        directory = self.store.directory
        with self._lock:
            self._touched.discard(disk)
        info = hash_file(os.path.join(directory, disk))
        with self._lock:
            if disk in self._touched or not os.path.exists(os.path.join(directory, disk)):
                return False
            files.atomic_write(directory, checksum_file(disk), info.to_json(), sync_dir=False)
        return True

    def verify(self) -> dict[str, Any]:
        """Re-hash every snapshot file and compare with its record; a missing record is written now."""
        directory = self.store.directory
        report: dict[str, Any] = {}
        for disk in sorted(self.store.disks):
            if meta.head_index(disk) is not None:
                continue
            recorded = read_checksum(directory, disk)
            actual = hash_file(os.path.join(directory, disk))
            entry: dict[str, Any] = {"checksum": actual.checksum, "recorded": "", "ok": True, "bad_blocks": []}
            if recorded is not None and recorded.comparable:
                bad = checksum.mismatched_blocks(recorded, actual)
                entry.update(recorded=recorded.checksum, ok=not bad, bad_blocks=bad[:64])
            else:
                with self._lock:
                    if disk not in self._touched:
                        files.atomic_write(directory, checksum_file(disk), actual.to_json(), sync_dir=False)
            report[disk] = entry
        return {"files": report}


# -- operations on a store, also used offline ---------------------------------------------------------------------


def revert(store: ReplicaStore, snap: str) -> None:
    """Make `snap` the parent of a new empty head; the old head is discarded, later snapshots stay as a branch."""
    disks = store.disks
    if snap not in disks or meta.snapshot_name(snap) is None:
        raise errors.NotFound(f"snapshot {meta.snapshot_name(snap) or snap} does not exist in {store.directory}")
    if disks[snap].removed:
        raise errors.InvalidArgument(f"snapshot {meta.snapshot_name(snap)} is removed; it cannot be reverted to")
    directory = store.directory
    old_head = store.head
    new_head = meta.next_head_file(old_head)
    path = os.path.join(directory, new_head)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, store.size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise errors.from_oserror(exc, f"creating {path}") from exc
    head_disk = meta.DiskMeta(name=new_head, parent=snap, created=_now())
    files.atomic_write(directory, meta.meta_file(new_head), head_disk.to_json(), sync_dir=False)
    volume = dataclasses.replace(store.volume, head=new_head, parent=snap, dirty=True)
    files.atomic_write(directory, meta.VOLUME_META, volume.to_json())  # the commit point
    for stale in (old_head, meta.meta_file(old_head)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, stale))
    files.fsync_dir(directory)
    store.reload_chain()
    log.info("reverted %s", kv(dir=directory, snapshot=snap, head=new_head))


def expand(store: ReplicaStore, size: int) -> None:
    """Grow the volume to `size` bytes: the head file grows (new blocks are holes), then volume.meta commits."""
    if size < store.size:
        raise errors.InvalidArgument(
            f"cannot shrink a volume from {store.size} to {size} bytes: volumes only grow (as in Longhorn)"
        )
    if size % meta.SECTOR_SIZE:
        raise errors.InvalidArgument(f"volume size {size} must be a multiple of {meta.SECTOR_SIZE}")
    if size == store.size:
        return
    try:
        os.ftruncate(store.head_fd, size)
        os.fsync(store.head_fd)
    except OSError as exc:
        raise errors.from_oserror(exc, f"growing {store.head}") from exc
    files.atomic_write(store.directory, meta.VOLUME_META, dataclasses.replace(store.volume, size=size).to_json())
    store.reload_chain()
    log.info("expanded %s", kv(dir=store.directory, size=size))


def _extents_from(fd: int, start: int, limit: int, budget: int) -> tuple[list[tuple[int, int]], int]:
    """Data extents of `fd` from `start`, at most `budget` bytes in all; returns them and where to go on (-1: done)."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < limit and budget > 0:
        try:
            lo = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return out, -1
            raise
        if lo >= limit:
            return out, -1
        hi = min(os.lseek(fd, lo, os.SEEK_HOLE), limit, lo + budget)
        out.append((lo, hi - lo))
        budget -= hi - lo
        pos = hi
    return out, (pos if pos < limit else -1)


def _string(request: Mapping[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise errors.InvalidArgument(f"request needs a non-empty string {key!r}")
    return value


def _int(request: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = request.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise errors.InvalidArgument(f"request needs a non-negative integer {key!r}")
    return value


# -- offline operations on replica directories (no server holds them) ---------------------------------------------


def revert_directory(directory: str, name: str) -> str:
    """Revert a stopped replica; the directory lock makes this fail with Conflict while a server holds it."""
    store = ReplicaStore.open(directory)
    try:
        revert(store, snapshot_file(name))
        return store.head
    finally:
        store.close()


def clone(source: str, name: str, targets: Sequence[str], *, origin: str = "") -> str:
    """Create replica directories for a new volume whose only snapshot is `name` of the replica in `source`.

    Reads the source without its lock: snapshot files are immutable (a concurrent purge only adds blocks that read
    the same), so this works while the source replica is served. Each target gets volume-snap-<name>.img holding
    the flattened data of the chain up to that snapshot, its checksum, and an empty head. Returns the file name.
    """
    snap = snapshot_file(name)
    volume = meta.VolumeMeta.from_json(files.read_small(source, meta.VOLUME_META))
    disks = {}
    for entry in sorted(os.listdir(source)):
        if entry.endswith(".img" + meta.DISK_META_SUFFIX):
            disk = entry[: -len(meta.DISK_META_SUFFIX)]
            disks[disk] = meta.DiskMeta.from_json(files.read_small(source, entry), file=os.path.join(source, entry))
    if snap not in disks or meta.snapshot_name(snap) is None:
        raise errors.NotFound(f"snapshot {meta.snapshot_name(snap) or name} does not exist in {source}")
    if disks[snap].removed:
        raise errors.InvalidArgument(f"snapshot {meta.snapshot_name(snap)} is removed; it cannot be cloned")
    layers = meta.chain(snap, disks)
    for target in targets:
        if os.path.exists(target) and os.listdir(target):
            raise errors.AlreadyExists(f"clone target {target} is not empty")
    fds: list[int] = []
    outs: list[int] = []
    try:
        for layer in layers:
            fds.append(os.open(os.path.join(source, layer), os.O_RDONLY))
        nblocks = extents.blocks_for(volume.size)
        emap = extents.ExtentMap.build(
            nblocks, snapshots=[files.data_extents(fd, limit=volume.size) for fd in fds], head=[]
        )
        for target in targets:
            os.makedirs(target, exist_ok=True)
            fd = os.open(os.path.join(target, snap), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            outs.append(fd)
            os.ftruncate(fd, volume.size)
        step = FOLD_BUDGET // BLOCK_SIZE
        for first, count, src in emap.runs(0, nblocks):
            if src == extents.ZERO:
                continue
            for at in range(first, first + count, step):
                lo = at * BLOCK_SIZE
                hi = min((min(at + step, first + count)) * BLOCK_SIZE, volume.size)
                buf = bytearray(hi - lo)
                files.pread_into(fds[src - 1], memoryview(buf), lo)
                for out in outs:
                    files.pwrite_all(out, buf, lo)
        for out in outs:
            os.fsync(out)
    except OSError as exc:
        raise errors.from_oserror(exc, f"cloning {snap} from {source}") from exc
    finally:
        for fd in (*fds, *outs):
            os.close(fd)
    source_disk = disks[snap]
    labels = dict(source_disk.labels)
    if origin:
        labels["metalhorn.io/cloned-from"] = origin
    record = hash_file(os.path.join(targets[0], snap)) if targets else None
    for target in targets:
        head = meta.head_file(0)
        try:
            fd = os.open(os.path.join(target, head), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.ftruncate(fd, volume.size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise errors.from_oserror(exc, f"creating {target}/{head}") from exc
        snap_disk = meta.DiskMeta(
            name=snap, parent="", user_created=True, created=source_disk.created or _now(), labels=labels
        )
        files.atomic_write(target, meta.meta_file(snap), snap_disk.to_json(), sync_dir=False)
        files.atomic_write(
            target, meta.meta_file(head), meta.DiskMeta(name=head, parent=snap, created=_now()).to_json()
        )
        if record is not None:
            files.atomic_write(target, checksum_file(snap), record.to_json(), sync_dir=False)
        files.atomic_write(target, meta.REVISION_COUNTER, meta.encode_revision(0), sync_dir=False)
        files.atomic_write(
            target, meta.VOLUME_META, meta.VolumeMeta(size=volume.size, head=head, parent=snap).to_json()
        )
        log.info("cloned %s", kv(source=source, snapshot=snap, target=target, size=volume.size))
    return snap
