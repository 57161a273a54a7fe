"""The replicating engine: one BlockDevice over N replica connections (the asyncio shell around policy.py).

Writes, trims, write-zeroes and flushes go to every RW and WO replica. They are put on every replica's wire in the
caller's order before anything is awaited, so all replicas see one order; the operation is acknowledged when every
replica answered, and the per-replica error map goes to `policy.after_operation`, which decides who goes ERR and
what the caller gets. Reads go to RW replicas round-robin; a failed read takes that replica out and is retried on
another.

Hot-path notes: no task per request and no asyncio.gather -- a fan-out is N client futures and one counter
callback that completes a single future the caller awaits. The policy runs only when something failed.

Hooks for rebuild (storage/engine/rebuild.py): `hold_writes()` pauses new modifying requests for a moment (the
ones already on the wire stay ahead of anything sent meanwhile, as every connection is in order), `attach_replica()`
adds a replica as WO (it gets every write from then on), `set_mode(address, Mode.RW)` promotes it when its data is
complete, and `remove_replica()` drops one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from metalhorn.common import errors, logs
from metalhorn.storage import blockdev
from metalhorn.storage.engine import policy
from metalhorn.storage.engine.policy import Mode
from metalhorn.storage.wire import client as wire_client
from metalhorn.storage.wire import codec

log = logging.getLogger(__name__)

_WRITE = codec.FrameType.WRITE
_UNMAP = codec.FrameType.UNMAP
_WRITE_ZEROES = codec.FrameType.WRITE_ZEROES
_FLUSH = codec.FrameType.FLUSH
_PING = codec.FrameType.PING

# Deadline of a FLUSH (and of history ops) on a replica. A flush waits for fsync, which takes as long as the dirty
# backlog needs -- seconds after a burst of random writes (8.6 s measured after 20 s of fio on 3 replicas sharing a
# disk) -- so it says nothing about a dead replica; the keepalive PINGs, answered while the fsync runs in the
# replica's worker thread, keep the normal --replica-timeout. With the normal deadline one slow flush set every
# replica ERR at once and the volume died.
FLUSH_TIMEOUT = 120.0

# Largest request sent to a replica; bigger ones are split (the replica protocol caps lengths and payloads).
CHUNK = 32 << 20
assert CHUNK <= codec.MAX_PAYLOAD

Connect = Callable[[str], Awaitable[wire_client.ReplicaClient]]


@dataclasses.dataclass(eq=False)
class Replica:
    """The engine's view of one replica (mutable: its mode changes)."""

    address: str
    client: wire_client.ReplicaClient | None
    mode: Mode
    reason: str = ""


class Engine:
    """BlockDevice over replicas. Build it with `await Engine.open(...)`."""

    def __init__(self, *, volume: str, size: int, replicas: Sequence[Replica]) -> None:
        self.volume = volume
        self._size = size
        self._replicas: list[Replica] = list(replicas)
        self._targets: list[Replica] = []  # RW + WO: take writes
        self._clients: list[wire_client.ReplicaClient] = []  # their clients, same order
        self._readers: list[tuple[Replica, wire_client.ReplicaClient]] = []  # RW: serve reads
        self._next_reader = 0
        self._closed = False
        self._gate: asyncio.Future[None] | None = None  # set while hold_writes() pauses modifying requests
        self.counters = Counters()
        for replica in self._replicas:
            if replica.client is not None:
                replica.client.on_failure = self._lost_callback(replica)
        self._refresh()

    # -- start-up ---------------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        *,
        volume: str,
        size: int,
        addresses: Sequence[str],
        timeout: float = wire_client.DEFAULT_TIMEOUT,  # noqa: ASYNC109 - per-request deadline of every replica
        connect: Connect | None = None,
    ) -> Engine:
        """Connect every replica, ask each for its state, and start with the ones holding the newest data.

        Raises Unavailable when no replica is usable, InvalidArgument when a replica's size differs from `size`.
        """
        if not addresses:
            raise errors.InvalidArgument("an engine needs at least one replica address")
        if len(set(addresses)) != len(addresses):
            raise errors.InvalidArgument(f"replica addresses must be distinct: {list(addresses)}")

        async def default_connect(address: str) -> wire_client.ReplicaClient:
            return await wire_client.ReplicaClient.connect(address, timeout=timeout)

        dial = connect or default_connect
        results = await asyncio.gather(*(_probe(dial, address) for address in addresses))
        clients = {address: client for address, (client, _state) in zip(addresses, results, strict=True) if client}
        states = {address: state for address, (_client, state) in zip(addresses, results, strict=True)}
        plan = policy.at_start(states, size=size)
        if plan.error is not None:
            for client in clients.values():
                client.close()
            raise plan.error
        replicas = []
        for address in addresses:
            mode, reason = plan.modes[address], plan.reasons[address]
            kept = clients.get(address)
            if mode is not Mode.RW and kept is not None:
                kept.close()
                kept = None
            replicas.append(Replica(address=address, client=kept, mode=mode, reason=reason))
            state = states[address]
            revision = state.revision if isinstance(state, policy.ReplicaState) else "-"
            level = logging.INFO if mode is Mode.RW else logging.WARNING
            log.log(
                level,
                "replica start mode %s",
                logs.kv(volume=volume, replica=address, mode=mode.value, revision=revision, reason=reason or "-"),
            )
        for replica in replicas:
            state = states[replica.address]
            if replica.client is not None and isinstance(state, policy.ReplicaState) and state.unclean:
                # Chosen as the reference copy: the replicas rebuilt from it are its equals from now on.
                with contextlib.suppress(errors.MetalhornError):
                    await replica.client.control({"op": "sync_trusted"})
        return cls(volume=volume, size=size, replicas=replicas)

    # -- BlockDevice ------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    async def read(self, offset: int, length: int) -> bytes:
        blockdev.check_range(self._size, offset, length)
        if length > CHUNK:
            parts = [
                await self.read(at, min(CHUNK, offset + length - at)) for at in range(offset, offset + length, CHUNK)
            ]
            return b"".join(parts)
        for _attempt in range(len(self._replicas) + 1):  # every failure takes one replica out, so this is bounded
            readers = self._readers
            if not readers:
                break
            replica, client = readers[self._next_reader % len(readers)]
            self._next_reader += 1
            try:
                frame = await client.submit_read(offset, length)
            except errors.MetalhornError as exc:
                outcome = self._apply({replica.address: exc})
                if outcome.error is not None:
                    self.counters.errors += 1
                    raise outcome.error from exc
                continue
            self.counters.reads += 1
            self.counters.read_bytes += length
            return frame.payload
        raise self._no_rw()

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        length = len(data)
        if offset < 0 or offset + length > self._size:  # inline: this is the hottest line of the engine
            blockdev.check_range(self._size, offset, length)
        if self._gate is not None:
            await self._gated()
        if not self._readers:
            raise self._no_rw()
        clients = self._clients
        if length <= CHUNK:
            fanout = _Fanout(self, len(clients))
            reply = fanout.reply
            for replica, client in zip(self._targets, clients):  # noqa: B905 - same length by construction
                client.send(_WRITE, offset, length, reply, replica, payload=data, fua=fua)
        else:
            view = memoryview(data)
            pieces = range(0, length, CHUNK)
            fanout = _Fanout(self, len(clients) * len(pieces))
            for at in pieces:
                for replica, client in zip(self._targets, clients, strict=True):
                    client.send(_WRITE, offset + at, 0, fanout.reply, replica, payload=view[at : at + CHUNK], fua=fua)
        await fanout.done
        counters = self.counters
        counters.writes += 1
        counters.write_bytes += length

    async def flush(self) -> None:
        if self._gate is not None:
            await self._gated()
        await self._everywhere(_FLUSH)
        self.counters.flushes += 1

    async def trim(self, offset: int, length: int) -> None:
        blockdev.check_range(self._size, offset, length)
        await self._ranged(_UNMAP, offset, length, no_hole=False)
        self.counters.trims += 1
        self.counters.trim_bytes += length

    async def write_zeroes(self, offset: int, length: int, *, may_trim: bool = True) -> None:
        blockdev.check_range(self._size, offset, length)
        await self._ranged(_WRITE_ZEROES, offset, length, no_hole=not may_trim)
        self.counters.zeroes += 1
        self.counters.zero_bytes += length

    async def ping(self) -> None:
        """Keepalive: a replica that does not answer within the timeout goes ERR like on any failed request."""
        if not self._readers:
            return  # nothing left to watch; not an I/O error either
        await self._everywhere(_PING)

    # -- modes and info -----------------------------------------------------------------------------------------

    def set_size(self, size: int) -> None:
        """Expansion hook (engine/snapshots.py): called once every replica holds `size` bytes; never shrinks."""
        if size < self._size:
            raise errors.InvalidArgument(f"volume {self.volume}: cannot shrink from {self._size} to {size} bytes")
        self._size = size

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    def info(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "size": self._size,
            "replicas": [{"address": r.address, "mode": r.mode.value, "reason": r.reason} for r in self._replicas],
            "counters": dataclasses.asdict(self.counters),
        }

    async def add_replica(self, address: str, *, timeout: float = wire_client.DEFAULT_TIMEOUT) -> Replica:  # noqa: ASYNC109
        """Rebuild hook: connect a replica and add it as WO; from now on it receives every write."""
        known = next((r for r in self._replicas if r.address == address), None)
        if known is not None and known.mode is not Mode.ERR:
            raise errors.AlreadyExists(f"replica {address} is already in volume {self.volume} as {known.mode.value}")
        client = await wire_client.ReplicaClient.connect(address, timeout=timeout)
        return self.attach_replica(address, client)

    def attach_replica(self, address: str, client: wire_client.ReplicaClient) -> Replica:
        """Add a connected replica as WO (or move a known ERR replica to WO with a fresh connection)."""
        replica = next((r for r in self._replicas if r.address == address), None)
        if replica is None:
            replica = Replica(address=address, client=None, mode=Mode.ERR)
            self._replicas.append(replica)
        policy.check_transition(replica.mode, Mode.WO)
        replica.client = client
        client.on_failure = self._lost_callback(replica)
        self._set_mode(replica, Mode.WO, "rebuild started")
        return replica

    def set_mode(self, address: str, mode: Mode, reason: str = "") -> None:
        """Move a replica along a legal edge (WO->RW when a rebuild completes, anything->ERR by an operator)."""
        replica = next((r for r in self._replicas if r.address == address), None)
        if replica is None:
            raise errors.NotFound(f"replica {address} is not part of volume {self.volume}")
        policy.check_transition(replica.mode, mode)
        self._set_mode(replica, mode, reason)

    def remove_replica(self, address: str) -> None:
        """Drop a replica from the volume (closing its connection); the last RW replica cannot be removed."""
        replica = next((r for r in self._replicas if r.address == address), None)
        if replica is None:
            raise errors.NotFound(f"replica {address} is not part of volume {self.volume}")
        if replica.mode is Mode.RW and sum(r.mode is Mode.RW for r in self._replicas) == 1:
            raise errors.Conflict(f"replica {address} is the last RW replica of volume {self.volume}; add one first")
        self._replicas.remove(replica)
        if replica.client is not None:
            replica.client.on_failure = None
            replica.client.close()
            replica.client = None
        log.info("replica removed %s", logs.kv(volume=self.volume, replica=address, mode=replica.mode.value))
        self._refresh()

    @contextlib.asynccontextmanager
    async def hold_writes(self) -> AsyncIterator[None]:
        """Pause new writes, trims, zeroes and flushes inside the block; they resume in arrival order after it.

        Requests already sent are not waited for: each replica executes its connection in order, so they land
        before anything the holder sends meanwhile (a snapshot request, say).
        """
        while self._gate is not None:
            await asyncio.shield(self._gate)
        gate = self._gate = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            self._gate = None
            gate.set_result(None)

    async def _gated(self) -> None:
        while self._gate is not None:
            await asyncio.shield(self._gate)

    def close(self) -> None:
        """Close every replica connection; further I/O fails with Unavailable."""
        self._closed = True
        for replica in self._replicas:
            if replica.client is not None:
                replica.client.close()
        self._targets, self._clients, self._readers = [], [], []

    async def wait_closed(self) -> None:
        for replica in self._replicas:
            if replica.client is not None:
                await replica.client.wait_closed()

    # -- internals --------------------------------------------------------------------------------------------

    async def _everywhere(self, kind: codec.FrameType) -> None:
        if not self._readers:
            raise self._no_rw()
        fanout = _Fanout(self, len(self._clients))
        for replica, client in zip(self._targets, self._clients, strict=True):
            timeout = max(FLUSH_TIMEOUT, client.timeout) if kind == _FLUSH else None
            client.send(kind, 0, 0, fanout.reply, replica, timeout=timeout)
        await fanout.done

    async def _ranged(self, kind: codec.FrameType, offset: int, length: int, *, no_hole: bool) -> None:
        if self._gate is not None:
            await self._gated()
        if not self._readers:
            raise self._no_rw()
        end = offset + length
        pieces = range(offset, end, CHUNK) if length else range(offset, offset + 1)
        fanout = _Fanout(self, len(self._clients) * len(pieces))
        for at in pieces:
            for replica, client in zip(self._targets, self._clients, strict=True):
                client.send(kind, at, min(CHUNK, end - at), fanout.reply, replica, no_hole=no_hole)
        await fanout.done

    def _apply(self, failures: Mapping[str, errors.MetalhornError]) -> policy.Outcome:
        """Run the policy on one operation's error map and carry out its mode changes."""
        outcome = policy.after_operation({r.address: r.mode for r in self._replicas}, failures)
        by_address = {r.address: r for r in self._replicas}
        for change in outcome.changes:
            self._set_mode(by_address[change.replica], change.new, change.reason)
        return outcome

    def _set_mode(self, replica: Replica, mode: Mode, reason: str) -> None:
        old = replica.mode
        replica.mode, replica.reason = mode, reason
        level = logging.WARNING if mode is Mode.ERR else logging.INFO
        log.log(
            level,
            "replica mode changed %s",
            logs.kv(volume=self.volume, replica=replica.address, **{"from": old.value}, to=mode.value, reason=reason),
        )
        if mode is Mode.ERR and replica.client is not None:
            client, replica.client = replica.client, None
            # In-flight requests then fail at once and their errors no longer count. Deferred, because we may be
            # inside another client's reply callback: the policy must not run nested inside itself.
            asyncio.get_running_loop().call_soon(client.close)
        self._refresh()

    def _lost_callback(self, replica: Replica) -> Callable[[errors.MetalhornError], None]:
        def lost(exc: errors.MetalhornError) -> None:
            if replica.mode is not Mode.ERR and not self._closed:
                self._apply({replica.address: exc})

        return lost

    def _refresh(self) -> None:
        if self._closed:
            return
        pairs = [(r, r.client) for r in self._replicas if r.mode is not Mode.ERR and r.client is not None]
        self._targets = [replica for replica, _client in pairs]
        self._clients = [client for _replica, client in pairs]
        self._readers = [(replica, client) for replica, client in pairs if replica.mode is Mode.RW]

    def _no_rw(self) -> errors.MetalhornError:
        self.counters.errors += 1
        if self._closed:
            return errors.Unavailable(f"volume {self.volume}: the engine is closed")
        detail = "; ".join(f"{r.address}: {r.mode.value} {r.reason}".rstrip() for r in self._replicas)
        return errors.Unavailable(f"volume {self.volume}: no replica is in RW mode ({detail})")


@dataclasses.dataclass
class Counters:
    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    trims: int = 0
    trim_bytes: int = 0
    zeroes: int = 0
    zero_bytes: int = 0
    flushes: int = 0
    errors: int = 0


class _Fanout:
    """Counts the replies of one operation; the last one runs the policy (if anything failed) and completes `done`.

    The accounting happens in the client's reply callbacks, not in the awaiting coroutine, so the policy sees every
    failure even when the caller was cancelled meanwhile.
    """

    __slots__ = ("done", "engine", "failures", "remaining")

    def __init__(self, engine: Engine, count: int) -> None:
        self.engine = engine
        self.remaining = count
        self.failures: dict[str, errors.MetalhornError] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if count == 0:
            self.done.set_result(None)

    def reply(self, owner: Replica, _frame: codec.Frame | None, exc: errors.MetalhornError | None) -> None:
        if exc is not None:
            if self.failures is None:
                self.failures = {}
            self.failures.setdefault(owner.address, exc)
        self.remaining -= 1
        if self.remaining:
            return
        done = self.done
        if self.failures is None:
            if not done.done():
                done.set_result(None)
            return
        outcome = self.engine._apply(self.failures)
        if done.done():  # the caller was cancelled
            return
        if outcome.error is None:
            done.set_result(None)
        else:
            self.engine.counters.errors += 1
            done.set_exception(outcome.error)


async def _probe(
    dial: Connect, address: str
) -> tuple[wire_client.ReplicaClient | None, policy.ReplicaState | errors.MetalhornError]:
    """Connect one replica and read its state; any failure is returned, not raised (that replica goes ERR)."""
    try:
        client = await dial(address)
    except errors.MetalhornError as exc:
        return None, exc
    try:
        info = await client.control({"op": "info"})
        chain = info.get("chain", [])
        head = info.get("head")
        if not isinstance(chain, list):
            raise errors.ProtocolError(f"replica {address}: info 'chain' is not a list")
        state = policy.ReplicaState(
            size=int(info["size"]),
            revision=int(info["revision"]),
            chain=tuple(str(name) for name in chain if name != head),
            rebuilding=bool(info.get("rebuilding", False)),
            unclean=bool(info.get("unclean", False)),
        )
    except errors.MetalhornError as exc:
        client.close()
        return None, exc
    except (KeyError, TypeError, ValueError) as exc:
        client.close()
        return None, errors.ProtocolError(f"replica {address}: malformed info reply: {exc!r}")
    return client, state
