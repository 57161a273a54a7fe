"""Engine side of a rebuild: bring a replica (new, stale or broken) back to a complete RW copy under I/O.

Steps (DESIGN.md §2), one rebuild at a time per engine:

1. Hold new writes for a moment (Engine.hold_writes: requests already on the wire still land first, because every
   replica connection is in order). Take a system snapshot on every RW replica, read the source's chain, metadata
   and extent map, and ``sync_prepare`` the replica with the same chain and a fresh head (replica/sync.py); attach
   it as WO, so every write from now on reaches both heads. Release the writes.
2. Copy every snapshot file from one healthy RW replica -- frozen files, so no lock is needed: per 2 MiB block
   compare digests that cover allocation and data (FILE_CHECKSUM; a block the replica does not hold at all is
   copied without asking the source), and stream the differing blocks as data extents (FILE_READ -> FILE_WRITE,
   4 MiB ranges, several in flight; the replicas are other processes, maybe other hosts).
3. Hold writes again, give the replica the source's revision counter (``sync_finish``), WO -> RW.

A failure anywhere sets the replica ERR; a retry reuses the files it already has (same names), and the digests
skip every block that already matches, so it does not start from 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from metalhorn.common import errors, logs
from metalhorn.storage.engine import engine as engine_mod
from metalhorn.storage.engine.policy import Mode
from metalhorn.storage.wire import client as wire_client
from metalhorn.storage.wire import codec, filesync

log = logging.getLogger(__name__)

COPY_RANGE = 8 << 20  # bytes per FILE_READ/FILE_WRITE
IN_FLIGHT = 6  # ranges being copied at once
CHECK_WINDOW = 32 << 20  # bytes of a file per FILE_CHECKSUM request (16 digests; the codec caps lengths)
BULK_TIMEOUT = 60.0  # per request on the rebuild's own connections (they carry 4 MiB frames and checksum work)
SYSTEM_LABEL = "metalhorn.io/system-snapshot"

Connect = Callable[[str, float], Awaitable[wire_client.ReplicaClient]]


@dataclasses.dataclass
class Progress:
    """One rebuild as the control endpoint and `metalhorn engine info` show it."""

    address: str
    state: str = "starting"  # starting | copying | done | error
    source: str = ""
    snapshot: str = ""  # the system snapshot taken for this rebuild
    total: int = 0  # bytes of snapshot files to examine (files x volume size)
    done: int = 0  # of those, examined so far
    transferred: int = 0  # data bytes sent to the replica
    skipped: int = 0  # bytes of 2 MiB blocks whose digests already matched
    files: int = 0  # snapshot files in the chain
    error: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def _default_connect(address: str, timeout: float) -> wire_client.ReplicaClient:  # noqa: ASYNC109
    return await wire_client.ReplicaClient.connect(address, timeout=timeout)


class Rebuilder:
    """Runs rebuilds for one Engine; `start(address)` returns at once, `progress` tells how it goes."""

    def __init__(
        self,
        engine: engine_mod.Engine,
        *,
        timeout: float = wire_client.DEFAULT_TIMEOUT,
        connect: Connect | None = None,
        copy_range: int = COPY_RANGE,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        if copy_range <= 0 or copy_range % filesync.SYNC_BLOCK or copy_range > 16 << 20:
            raise errors.InvalidArgument(f"copy range {copy_range} must be a multiple of 2 MiB up to 16 MiB")
        self._engine = engine
        self._timeout = timeout
        self._connect = connect or _default_connect
        self._copy_range = copy_range
        self._in_flight = max(1, in_flight)
        self._lock = asyncio.Lock()  # one rebuild at a time: a second would snapshot the first one's WO replica
        self._tasks: dict[str, asyncio.Task[Progress]] = {}
        self._names = itertools.count(1)
        self.progress: dict[str, Progress] = {}

    # -- public ---------------------------------------------------------------------------------------------------

    def start(self, address: str) -> Progress:
        """Begin rebuilding `address` (a new replica, or one of this volume's ERR replicas) in the background."""
        task = self._tasks.get(address)
        if task is not None and not task.done():
            raise errors.AlreadyExists(f"replica {address} is already being rebuilt")
        known = next((r for r in self._engine.replicas if r.address == address), None)
        if known is not None and known.mode is not Mode.ERR:
            mode = known.mode.value
            raise errors.AlreadyExists(f"replica {address} is already {mode} in volume {self._engine.volume}")
        progress = self.progress[address] = Progress(address=address)
        self._tasks[address] = asyncio.create_task(self._run(progress), name=f"rebuild-{address}")
        return progress

    def running(self, address: str) -> bool:
        task = self._tasks.get(address)
        return task is not None and not task.done()

    async def wait(self, address: str) -> Progress:
        return await self._tasks[address]

    def info(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.progress.values()]

    async def close(self) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, errors.MetalhornError):
                await task

    async def auto(self, *, interval: float = 2.0, max_backoff: float = 300.0) -> None:
        """Forever: rebuild an ERR replica as soon as its process answers again (backing off after failures)."""
        retry_at: dict[str, float] = {}
        failures: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            for replica in self._engine.replicas:
                address = replica.address
                if replica.mode is not Mode.ERR or self.running(address) or loop.time() < retry_at.get(address, 0):
                    continue
                if self._lock.locked() or not any(r.mode is Mode.RW for r in self._engine.replicas):
                    break
                try:
                    probe = await self._connect(address, min(self._timeout, 2.0))
                except errors.MetalhornError:
                    continue  # still down: try again next round
                probe.close()
                log.info("auto-rebuild %s", logs.kv(volume=self._engine.volume, replica=address))
                progress = await self._tasks_start_and_wait(address)
                if progress.state == "done":
                    failures.pop(address, None)
                else:
                    failures[address] = failures.get(address, 0) + 1
                    retry_at[address] = loop.time() + min(max_backoff, interval * 2 ** failures[address])

    async def _tasks_start_and_wait(self, address: str) -> Progress:
        try:
            self.start(address)
        except errors.MetalhornError as exc:
            return Progress(address=address, state="error", error=exc.message)
        return await self.wait(address)

    # -- one rebuild ------------------------------------------------------------------------------------------

    async def _run(self, progress: Progress) -> Progress:
        started = time.monotonic()
        async with self._lock:
            try:
                await self._rebuild(progress)
                progress.state = "done"
            except asyncio.CancelledError:
                self._fail(progress, errors.Unavailable("rebuild cancelled"))
                raise
            except errors.MetalhornError as exc:
                self._fail(progress, exc)
            except Exception as exc:
                log.exception("rebuild failed %s", logs.kv(replica=progress.address))
                self._fail(progress, errors.Internal(f"rebuild failed: {exc!r}"))
            finally:
                progress.seconds = round(time.monotonic() - started, 3)
        level = logging.INFO if progress.state == "done" else logging.WARNING
        log.log(level, "rebuild %s", logs.kv(volume=self._engine.volume, **progress.as_dict()))
        return progress

    def _fail(self, progress: Progress, exc: errors.MetalhornError) -> None:
        progress.state, progress.error = "error", f"{exc.code.name}: {exc.message}"
        replica = next((r for r in self._engine.replicas if r.address == progress.address), None)
        if replica is not None and replica.mode is Mode.WO:
            self._engine.set_mode(progress.address, Mode.ERR, f"rebuild failed: {progress.error}")

    async def _rebuild(self, progress: Progress) -> None:
        engine = self._engine
        address = progress.address
        client = await self._connect(address, self._timeout)
        attached = False
        bulk: list[wire_client.ReplicaClient] = []
        try:
            info = await client.control({"op": "info"})
            if int(info.get("size", -1)) != engine.size:
                raise errors.InvalidArgument(f"replica {address} has size {info.get('size')}, volume {engine.size}")
            source = next((r for r in engine.replicas if r.mode is Mode.RW and r.client is not None), None)
            if source is None or source.client is None:
                raise errors.Unavailable(f"volume {engine.volume}: no RW replica to rebuild {address} from")
            progress.source = source.address
            target_bulk = await self._connect(address, max(BULK_TIMEOUT, self._timeout))
            bulk.append(target_bulk)
            source_bulk = await self._connect(source.address, max(BULK_TIMEOUT, self._timeout))
            bulk.append(source_bulk)

            async with engine.hold_writes():
                chain = await self._snapshot_and_prepare(progress, source, client)
                engine.attach_replica(address, client)
                attached = True
            progress.state = "copying"
            progress.files = len(chain)
            progress.total = len(chain) * engine.size
            for name in chain:
                await self._copy_file(progress, name, source_bulk, target_bulk)
            async with engine.hold_writes():
                if source.mode is not Mode.RW or source.client is None:
                    raise errors.Unavailable(f"rebuild source {source.address} left RW during the copy")
                revision = int((await source.client.control({"op": "info"}))["revision"])
                await client.control({"op": "sync_finish", "revision": revision}, timeout=BULK_TIMEOUT)
                engine.set_mode(address, Mode.RW, "")
        finally:
            for extra in bulk:
                extra.close()
            if not attached:
                client.close()

    async def _snapshot_and_prepare(
        self, progress: Progress, source: engine_mod.Replica, client: wire_client.ReplicaClient
    ) -> list[str]:
        """Inside hold_writes: system snapshot on every RW replica, then lay out the same chain on the new one."""
        engine = self._engine
        name = f"rebuild-{int(time.time())}-{next(self._names)}"
        created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        request = {"op": "snapshot", "name": name, "user_created": False, "created": created,
                   "labels": {SYSTEM_LABEL: "rebuild"}}  # fmt: skip
        targets = [r for r in engine.replicas if r.mode is Mode.RW and r.client is not None]
        results = await asyncio.gather(
            *(r.client.control(request, timeout=BULK_TIMEOUT) for r in targets if r.client is not None),
            return_exceptions=True,
        )
        failures = {r.address: exc for r, exc in zip(targets, results, strict=True) if isinstance(exc, BaseException)}
        for replica_address, exc in failures.items():
            error = exc if isinstance(exc, errors.MetalhornError) else errors.Internal(repr(exc))
            if not isinstance(exc, errors.MetalhornError) and not isinstance(exc, Exception):
                raise exc
            engine.set_mode(replica_address, Mode.ERR, f"system snapshot failed: {error.message}")
        if source.address in failures or source.client is None:
            raise errors.Unavailable(f"rebuild source {source.address} failed its system snapshot")
        progress.snapshot = name
        source_info = await source.client.control({"op": "info"})
        snap_map = await source.client.control({"op": "sync_map"}, timeout=BULK_TIMEOUT)
        layers = source_info["layers"]
        snapshots = layers[:-1]
        if [layer["name"] for layer in layers] != snap_map["chain"]:
            raise errors.Conflict(f"source {source.address} changed its chain during the rebuild's snapshot")
        await client.control(
            {
                "op": "sync_prepare",
                "size": engine.size,
                "chain": snapshots,
                "head": source_info["head"],
                "created": created,
                "map": snap_map["map"],
            },
            timeout=BULK_TIMEOUT,
        )
        return [str(layer["name"]) for layer in snapshots]

    async def _copy_file(
        self,
        progress: Progress,
        name: str,
        source: wire_client.ReplicaClient,
        target: wire_client.ReplicaClient,
    ) -> None:
        """Copy the blocks of one snapshot file that differ, CHECK_WINDOW at a time, IN_FLIGHT ranges at once."""
        size = self._engine.size
        encoded = filesync.encode_name(name)
        queue: asyncio.Queue[tuple[int, int, bool]] = asyncio.Queue(maxsize=self._in_flight * 2)
        failed: list[errors.MetalhornError] = []

        async def worker() -> None:
            while True:
                offset, length, target_empty = await queue.get()
                try:
                    if failed:
                        continue  # drain: the copy has failed already
                    reply = await _request(source, codec.FrameType.FILE_READ, offset, length, encoded)
                    body = reply.payload
                    carried = filesync.data_bytes(body)
                    if carried or not target_empty:
                        payload = filesync.write_payload(name, body)
                        await _request(target, codec.FrameType.FILE_WRITE, offset, length, payload)
                    progress.transferred += carried
                    progress.done += length
                except errors.MetalhornError as exc:
                    failed.append(exc)
                except Exception as exc:
                    failed.append(errors.Internal(f"copying {name}: {exc!r}"))
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(self._in_flight)]
        try:
            for window in range(0, size, CHECK_WINDOW):
                span = min(CHECK_WINDOW, size - window)
                mine = filesync.split_digests(
                    (await _request(target, codec.FrameType.FILE_CHECKSUM, window, span, encoded)).payload
                )
                theirs: list[bytes] | None = None
                if any(d != filesync.EMPTY for d in mine):
                    reply = await _request(source, codec.FrameType.FILE_CHECKSUM, window, span, encoded)
                    theirs = filesync.split_digests(reply.payload)
                run: list[int] = []  # consecutive block offsets to copy
                run_empty = True
                for index, digest in enumerate(mine):
                    at = window + index * filesync.SYNC_BLOCK
                    block = min(filesync.SYNC_BLOCK, size - at)
                    if theirs is not None and digest != filesync.EMPTY and theirs[index] == digest:
                        progress.skipped += block
                        progress.done += block
                        await self._put_run(queue, run, run_empty, failed)
                        run, run_empty = [], True
                        continue
                    run.append(at)
                    run_empty = run_empty and digest == filesync.EMPTY
                    if len(run) * filesync.SYNC_BLOCK >= self._copy_range:
                        await self._put_run(queue, run, run_empty, failed)
                        run, run_empty = [], True
                await self._put_run(queue, run, run_empty, failed)
            await queue.join()
            if failed:
                raise failed[0]
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _put_run(
        self,
        queue: asyncio.Queue[tuple[int, int, bool]],
        run: list[int],
        empty: bool,
        failed: list[errors.MetalhornError],
    ) -> None:
        if failed:
            raise failed[0]
        if run:
            length = min(run[-1] + filesync.SYNC_BLOCK, self._engine.size) - run[0]
            await queue.put((run[0], length, empty))


async def _request(
    client: wire_client.ReplicaClient, kind: codec.FrameType, offset: int, length: int, payload: bytes
) -> codec.Frame:
    """A FILE_* request: its header length is the file range, not the payload size (so not `client.send`)."""
    return await client._future(int(kind), 0, offset, length, payload)
