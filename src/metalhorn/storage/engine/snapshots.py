"""Engine-side history: fan snapshot, remove, purge, revert, verify and expand out to the replicas.

The snapshot point. The engine puts a write on every replica's wire in the caller's order before it awaits
anything, and each replica executes frames in arrival order. `create` puts its ``snap.create`` CONTROL frame on
every RW and WO replica's wire in one synchronous step, so each replica cuts its head at the same point of the
write stream: writes queued before are in the snapshot everywhere, writes after are in the new head everywhere.
Writes are held in the engine while the replicas cut (reads go on): a cut fsyncs the head, which under heavy writes
takes longer than the replica timeout, and writes queued on the wire behind it would time out everywhere at once.
The replicas are flushed first, with writes flowing, so the hold covers only what arrived since.

Failures: a replica that fails an operation that succeeded elsewhere has a different chain (or size) from the
others, so it goes ERR and is rebuilt; when every replica fails, the error goes to the caller and nobody moves.

Longhorn rules kept: revert only while no frontend serves the volume (`engine serve --frontend none`); remove
and purge are refused while a replica rebuilds (WO); purge first marks system snapshots removed; history ops run
one at a time (a purge holds the lock to its end, so a snapshot requested meanwhile waits for it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from metalhorn.common import errors, logs
from metalhorn.storage.chain import checksum
from metalhorn.storage.engine import engine as engine_mod
from metalhorn.storage.engine.control import Handler
from metalhorn.storage.engine.policy import Mode
from metalhorn.storage.wire import codec

log = logging.getLogger(__name__)

VERIFY_TIMEOUT = 3600.0  # hashing every snapshot file of a big volume takes a while
FOLD_BUDGET = 8 << 20
MAX_FOLD_STEPS = 1 << 24

OnCorrupt = Callable[[str], Awaitable[None] | None]


class History:
    """History operations of one volume. `handlers()` gives the engine control endpoint's ops."""

    def __init__(
        self,
        engine: engine_mod.Engine,
        *,
        frontend_up: Callable[[], bool],
        on_corrupt: OnCorrupt | None = None,
    ) -> None:
        self.engine = engine
        self._frontend_up = frontend_up
        self._on_corrupt = on_corrupt
        self._lock = asyncio.Lock()

    def handlers(self) -> dict[str, Handler]:
        return {
            "snapshot.create": self.create,
            "snapshot.ls": self.ls,
            "snapshot.rm": self.remove,
            "snapshot.purge": self.purge,
            "snapshot.revert": self.revert,
            "snapshot.verify": self.verify,
            "expand": self.expand,
        }

    # -- ops --------------------------------------------------------------------------------------------------

    async def create(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_volume(request)
        name = request.get("name") or str(uuid.uuid4())
        labels = request.get("labels") or {}
        user_created = bool(request.get("user_created", True))
        async with self._lock:
            self._refuse_while_rebuilding("create a snapshot")
            await self._drain()
            # New writes wait in the engine (no replica deadline runs there) while each replica syncs and cuts its
            # head; on the wire they would queue behind the cut and time out on every replica at once.
            async with self.engine.hold_writes():
                ok = await self._everywhere(
                    {"op": "snap.create", "name": name, "labels": labels, "user_created": user_created},
                    what=f"snapshot {name}",
                    timeout=engine_mod.FLUSH_TIMEOUT,
                )
        log.info("%s", logs.kv(volume=self.engine.volume, event="snapshot", name=name, replicas=len(ok)))
        return {"name": name, "replicas": sorted(ok)}

    async def ls(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_volume(request)
        replica = self._readers()[0]
        assert replica.client is not None
        result = await replica.client.control({"op": "snap.list"})
        result["replica"] = replica.address
        result["volume"] = self.engine.volume
        return result

    async def remove(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_volume(request)
        name = request.get("name")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument("snapshot.rm needs the snapshot's name")
        async with self._lock:
            self._refuse_while_rebuilding("remove a snapshot")
            await self._everywhere({"op": "snap.remove", "name": name}, what=f"remove snapshot {name}")
        return {"removed": name}

    async def purge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fold every removed (and system) snapshot into its child, online, each replica at its own pace."""
        self._check_volume(request)
        async with self._lock:
            self._refuse_while_rebuilding("purge snapshots")
            await self._everywhere({"op": "snap.remove_system"}, what="mark system snapshots removed")
            replicas = self._targets()
            results = await asyncio.gather(*(self._purge_one(r) for r in replicas), return_exceptions=True)
        purged: list[str] = []
        failures: dict[str, errors.MetalhornError] = {}
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, errors.MetalhornError):
                failures[replica.address] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                purged = purged or result
        self._settle(failures, succeeded=len(replicas) - len(failures), what="purge")
        return {"purged": purged}

    async def revert(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check_volume(request)
        name = request.get("name")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument("snapshot.revert needs the snapshot's name")
        if self._frontend_up():
            raise errors.Conflict(
                f"volume {self.engine.volume} is being served: revert needs the volume offline, as in Longhorn. "
                "Stop the engine, start it again with `engine serve ... --frontend none` (maintenance mode), revert, "
                "then restart it with its frontend; or revert the stopped replicas with `snapshot revert "
                "--replica-dir DIR ...`"
            )
        async with self._lock:
            self._refuse_while_rebuilding("revert")
            await self._everywhere({"op": "snap.revert", "name": name}, what=f"revert to {name}")
        return {"reverted": name}

    async def expand(self, request: dict[str, Any]) -> dict[str, Any]:
        size = request.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise errors.InvalidArgument("expand needs a positive integer size in bytes")
        current = self.engine.size
        if size < current:
            raise errors.InvalidArgument(
                f"cannot shrink volume {self.engine.volume} from {current} to {size} bytes: volumes only grow "
                "(shrinking would cut off data a filesystem may still use)"
            )
        async with self._lock:
            if size > current:
                self._refuse_while_rebuilding("expand")
                await self._everywhere({"op": "snap.expand", "size": size}, what=f"expand to {size}")
                self.engine.set_size(size)
        log.info("%s", logs.kv(volume=self.engine.volume, event="expanded", size=size))
        return {"size": size, "previous": current}

    async def verify(self, request: dict[str, Any]) -> dict[str, Any]:
        """Re-hash every snapshot file on every RW replica; replicas whose files changed behind our back go ERR."""
        self._check_volume(request)
        replicas = self._readers()
        results = await asyncio.gather(
            *(r.client.control({"op": "snap.verify"}, timeout=VERIFY_TIMEOUT) for r in replicas if r.client),
            return_exceptions=True,
        )
        reports: dict[str, dict[str, Any]] = {}
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, errors.MetalhornError):
                reports[replica.address] = {"error": result.message, "files": {}}
            elif isinstance(result, BaseException):
                raise result
            else:
                reports[replica.address] = result
        corrupt = judge(reports)
        healthy = [a for a in reports if a not in corrupt and "error" not in reports[a]]
        acted: list[str] = []
        if corrupt and healthy:
            for address, reason in sorted(corrupt.items()):
                self.engine.set_mode(address, Mode.ERR, reason)
                acted.append(address)
                if self._on_corrupt is not None:
                    outcome = self._on_corrupt(address)
                    if outcome is not None:
                        await outcome
        return {"replicas": reports, "corrupt": corrupt, "set_err": acted}

    # -- purge of one replica ---------------------------------------------------------------------------------

    async def _purge_one(self, replica: engine_mod.Replica) -> list[str]:
        purged: list[str] = []
        for _round in range(1000):  # each round removes one snapshot file; a chain holds at most 255
            client = self._client(replica)
            plan = await client.control({"op": "snap.purge_next"}, timeout=engine_mod.FLUSH_TIMEOUT)
            snap, child = plan.get("snapshot"), plan.get("child", "")
            if not snap:
                return purged
            try:
                start = 0
                for _step in range(MAX_FOLD_STEPS):
                    # Folds copy and fsync: as slow as the disk's backlog, so the long deadline (engine.FLUSH_TIMEOUT).
                    step = await self._client(replica).control(
                        {"op": "snap.fold", "snapshot": snap, "child": child, "start": start, "budget": FOLD_BUDGET},
                        timeout=engine_mod.FLUSH_TIMEOUT,
                    )
                    start = int(step.get("next", -1))
                    if start < 0:
                        break
                await self._client(replica).control(
                    {"op": "snap.fold_commit", "snapshot": snap, "child": child}, timeout=engine_mod.FLUSH_TIMEOUT
                )
            except errors.Conflict:
                # The chain changed under us (a rebuild's system snapshot made the head a snapshot): plan again.
                # What was copied so far reads the same, so nothing is lost by starting this fold over.
                continue
            purged.append(str(snap))
        raise errors.Internal(f"replica {replica.address}: purge did not converge")

    # -- helpers ----------------------------------------------------------------------------------------------

    def _check_volume(self, request: dict[str, Any]) -> None:
        volume = request.get("volume")
        if volume is not None and volume != self.engine.volume:
            raise errors.InvalidArgument(
                f"this engine serves volume {self.engine.volume!r}, not {volume!r}; check --control"
            )

    def _targets(self) -> list[engine_mod.Replica]:
        targets = [r for r in self.engine.replicas if r.mode is not Mode.ERR and r.client is not None]
        if not any(r.mode is Mode.RW for r in targets):
            raise errors.Unavailable(f"volume {self.engine.volume}: no replica is in RW mode")
        return targets

    def _readers(self) -> list[engine_mod.Replica]:
        return [r for r in self._targets() if r.mode is Mode.RW]

    def _client(self, replica: engine_mod.Replica) -> Any:
        if replica.client is None:
            raise errors.Unavailable(f"replica {replica.address} left the volume ({replica.mode.value})")
        return replica.client

    def _refuse_while_rebuilding(self, what: str) -> None:
        rebuilding = [r.address for r in self.engine.replicas if r.mode is Mode.WO]
        if rebuilding:
            raise errors.Conflict(f"cannot {what} while replica {', '.join(rebuilding)} is rebuilding; retry after")

    async def _drain(self, *, rounds: int = 3, quick: float = 1.0) -> None:
        """Flush every replica before a snapshot cuts its head (writes keep flowing meanwhile).

        A replica's snapshot fsyncs its head while writes wait (held in the engine); after a burst of random writes
        that fsync takes seconds. Flushed first, the cut's own fsync covers only what arrived since (flush again
        while a flush is slow, a few times at most), so the write pause stays short.
        """
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            started = loop.time()
            await self.engine.flush()
            if loop.time() - started < quick:
                return

    async def _everywhere(
        self,
        request: dict[str, Any],
        *,
        what: str,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline of this request on each replica
    ) -> dict[str, dict[str, Any]]:
        """Send one CONTROL request to every RW and WO replica in one synchronous step (see the module docstring)."""
        replicas = self._targets()
        loop = asyncio.get_running_loop()
        payload = json.dumps(request, separators=(",", ":")).encode()
        futures: list[asyncio.Future[codec.Frame]] = []
        for replica in replicas:
            future: asyncio.Future[codec.Frame] = loop.create_future()
            assert replica.client is not None
            replica.client.send(codec.FrameType.CONTROL, 0, 0, _complete, future, payload=payload, timeout=timeout)
            futures.append(future)
        await asyncio.wait(futures)
        ok: dict[str, dict[str, Any]] = {}
        failures: dict[str, errors.MetalhornError] = {}
        for replica, future in zip(replicas, futures, strict=True):
            exc = future.exception()
            if exc is None:
                ok[replica.address] = json.loads(future.result().payload or b"{}")
            elif isinstance(exc, errors.MetalhornError):
                failures[replica.address] = exc
            else:
                raise exc
        self._settle(failures, succeeded=len(ok), what=what)
        return ok

    def _settle(self, failures: dict[str, errors.MetalhornError], *, succeeded: int, what: str) -> None:
        if not failures:
            return
        if not succeeded:
            raise next(iter(failures.values()))
        for address, exc in failures.items():
            log.warning("%s", logs.kv(volume=self.engine.volume, replica=address, op=what, error=exc.message))
            replica = next((r for r in self.engine.replicas if r.address == address), None)
            if replica is not None and replica.mode is not Mode.ERR:
                self.engine.set_mode(address, Mode.ERR, f"{what} failed: {exc.message}")


def judge(reports: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Which replicas hold a snapshot file that changed behind our back, with the reason (pure).

    A file is bad on a replica when it no longer matches the checksum that replica recorded, or when its
    checksum disagrees with the majority of replicas (catches a change made before the checksum was recorded).
    """
    corrupt: dict[str, str] = {}
    by_file: dict[str, dict[str, str]] = {}
    for address, report in reports.items():
        for disk, entry in (report.get("files") or {}).items():
            if not entry.get("ok", True):
                blocks = entry.get("bad_blocks") or []
                corrupt.setdefault(address, f"{disk} changed behind our back (2 MiB blocks {blocks})")
            by_file.setdefault(disk, {})[address] = str(entry.get("checksum", ""))
    for disk, values in sorted(by_file.items()):
        if len(values) < 3:
            continue  # with two copies a disagreement names no culprit; the recorded checksums decide
        _value, minority = checksum.majority(values)
        for address in minority:
            corrupt.setdefault(address, f"{disk} differs from the other replicas")
    return corrupt


def _complete(
    future: asyncio.Future[codec.Frame], frame: codec.Frame | None, exc: errors.MetalhornError | None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert frame is not None
        future.set_result(frame)
