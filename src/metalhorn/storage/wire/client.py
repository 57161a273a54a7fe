"""asyncio client of the replica protocol: one connection, many requests in flight.

The engine talks to each replica through one ReplicaClient. Requests are pipelined: every request gets a fresh
request id and a completion in a dict; replies (which may come out of order) complete it by id. There are no
per-request tasks and no per-request timers -- one periodic timer expires requests older than the timeout, because
on the data path a `wait_for` per 4 KiB write costs more than the write itself. Requests queued in one loop
iteration leave in one `writelines` (one syscall per batch, not per request).

Three ways to make a request, all synchronous up to the wire, so the engine can put one write on every replica's
wire in the same order before it awaits anything:
- `send(kind, ..., callback, arg)`: the cheapest -- `callback(arg, frame, error)` runs right inside
  data_received when the reply arrives (no future, no call_soon). The engine's fan-out uses this.
- `submit_*()`: returns a future of the reply frame.
- `async` methods (`read`, `write`, ...): the same requests for callers that just want the answer.

A request that times out means the replica stopped answering: the client then fails every pending request with
Unavailable and closes the connection (a late reply could not be trusted any more, and the engine takes the replica
out of service anyway). The same happens when the connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import typing
from collections.abc import Callable
from typing import Any

from metalhorn.common import addresses, errors, logs
from metalhorn.storage.wire import codec

log = logging.getLogger(__name__)

# A write payload: bytes, or a slice of a bigger buffer (memoryview) that is sent without copying.
Payload = bytes | bytearray | memoryview

# Completion of one request: callback(arg, reply frame, None) or callback(arg, None, error).
Callback = Callable[[Any, "codec.Frame | None", "errors.MetalhornError | None"], None]

DEFAULT_TIMEOUT = 8.0  # seconds, as Longhorn's engine-to-replica timeout

_REPLY = int(codec.Flags.REPLY)
_FUA = int(codec.Flags.FUA)
_NO_HOLE = int(codec.Flags.NO_HOLE)
_READ = int(codec.FrameType.READ)
_WRITE = int(codec.FrameType.WRITE)
_UNMAP = int(codec.FrameType.UNMAP)
_WRITE_ZEROES = int(codec.FrameType.WRITE_ZEROES)
_FLUSH = int(codec.FrameType.FLUSH)
_PING = int(codec.FrameType.PING)
_CONTROL = int(codec.FrameType.CONTROL)
_HELLO = int(codec.FrameType.HELLO)
_MAGIC = codec.MAGIC
_pack = codec.HEADER.pack


class ReplicaClient(asyncio.Protocol):
    """One connection to one replica server. Create it with `await ReplicaClient.connect(address)`."""

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise errors.InvalidArgument(f"replica timeout must be positive, got {timeout}")
        self.address = address
        self.timeout = timeout
        self.version = codec.VERSION
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = codec.Decoder()
        self._ids = itertools.count(1)  # 0 is the HELLO
        # request id -> (callback, its argument, deadline in loop time)
        self._pending: dict[int, tuple[Callback, Any, float]] = {}
        self._hello: asyncio.Future[codec.Frame] = self._loop.create_future()
        self._failure: errors.MetalhornError | None = None
        self._closed = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[Payload] = []  # requests of this loop iteration, sent together by _flush_out
        self._flush_scheduled = False
        self._tick = max(0.005, min(timeout / 4, 1.0))
        # Called once when the connection fails (lost, timed out, garbage) -- not on close(). The engine uses it to
        # take a dead replica out of service at once, even when no I/O is running.
        self.on_failure: Callable[[errors.MetalhornError], None] | None = None

    # -- connecting ---------------------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, address: str, *, timeout: float = DEFAULT_TIMEOUT) -> ReplicaClient:  # noqa: ASYNC109
        """Connect (TCP `HOST:PORT`, `tcp://HOST:PORT` or `unix:PATH`) and negotiate the protocol version.

        Raises Unavailable when the replica cannot be reached or does not answer HELLO within `timeout`,
        NotSupported when it speaks no common version.
        """
        where = addresses.parse_address(address, what="replica address")
        loop = asyncio.get_running_loop()
        client = cls(address, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                if where.is_unix:
                    await loop.create_unix_connection(lambda: client, where.path)
                else:
                    await loop.create_connection(lambda: client, where.host, where.port)
                client._send(codec.encode(codec.hello()))
                reply = await client._hello
        except TimeoutError:
            client.close()
            raise errors.Unavailable(f"replica {address}: no answer to HELLO within {timeout}s") from None
        except OSError as exc:
            client.close()
            raise errors.Unavailable(f"replica {address}: cannot connect: {exc.strerror or exc}") from exc
        except errors.MetalhornError:
            client.close()
            raise
        client.version = reply.version
        return client

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timer = self._loop.call_later(self._tick, self._expire)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except errors.ProtocolError as exc:
            self._fail(errors.Unavailable(f"replica {self.address}: protocol error: {exc.message}"))
            return
        pending = self._pending
        for frame in frames:
            if not frame.flags & _REPLY:
                self._fail(errors.Unavailable(f"replica {self.address}: protocol error: a request from the server"))
                return
            entry = pending.pop(frame.request_id, None)
            if entry is None:
                if frame.type == _HELLO and not self._hello.done():
                    self._answer_hello(frame)
                continue  # else: a reply after we failed everything; drop it
            callback, arg, _deadline = entry
            try:
                if frame.error:
                    message = bytes(frame.payload).decode("utf-8", "replace")
                    callback(arg, None, errors.from_code(frame.error, message))
                else:
                    callback(arg, frame, None)
            except Exception:  # a broken callback must not lose the other replies of this batch
                log.exception("%s", logs.kv(replica=self.address, event="reply callback failed"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed"
        self._fail(errors.Unavailable(f"replica {self.address}: {reason}"))
        if not self._closed.done():
            self._closed.set_result(None)

    def eof_received(self) -> bool | None:
        self._fail(errors.Unavailable(f"replica {self.address}: connection closed by the replica"))
        return None

    # -- requests: send() calls back, submit_* return a future ----------------------------------------------------

    def send(
        self,
        kind: codec.FrameType,
        offset: int,
        length: int,
        callback: Callback,
        arg: Any,
        *,
        payload: Payload | None = None,
        fua: bool = False,
        no_hole: bool = False,
        timeout: float | None = None,  # this request's deadline, for slow ops (FLUSH)
    ) -> None:
        """Queue one request; `callback(arg, frame, None)` or `callback(arg, None, error)` runs on completion.

        The callback may run before send() returns when the client has already failed.
        """
        flags = (_FUA if fua else 0) | (_NO_HOLE if no_hole else 0)
        length = len(payload) if payload else length
        self._request(int(kind), flags, offset, length, payload, callback, arg, timeout=timeout)

    def submit_read(self, offset: int, length: int) -> asyncio.Future[codec.Frame]:
        return self._future(_READ, 0, offset, length, None)

    def submit_write(self, offset: int, data: Payload, *, fua: bool = False) -> asyncio.Future[codec.Frame]:
        return self._future(_WRITE, _FUA if fua else 0, offset, len(data), data)

    def submit_unmap(self, offset: int, length: int) -> asyncio.Future[codec.Frame]:
        return self._future(_UNMAP, 0, offset, length, None)

    def submit_write_zeroes(self, offset: int, length: int, *, no_hole: bool = False) -> asyncio.Future[codec.Frame]:
        return self._future(_WRITE_ZEROES, _NO_HOLE if no_hole else 0, offset, length, None)

    def submit_flush(self) -> asyncio.Future[codec.Frame]:
        return self._future(_FLUSH, 0, 0, 0, None)

    def submit_ping(self) -> asyncio.Future[codec.Frame]:
        return self._future(_PING, 0, 0, 0, None)

    # -- the same requests, awaited --------------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        return (await self.submit_read(offset, length)).payload

    async def write(self, offset: int, data: Payload, *, fua: bool = False) -> None:
        await self.submit_write(offset, data, fua=fua)

    async def unmap(self, offset: int, length: int) -> None:
        await self.submit_unmap(offset, length)

    async def write_zeroes(self, offset: int, length: int, *, no_hole: bool = False) -> None:
        await self.submit_write_zeroes(offset, length, no_hole=no_hole)

    async def flush(self) -> None:
        await self.submit_flush()

    async def ping(self) -> None:
        await self.submit_ping()

    async def control(
        self,
        request: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the request's deadline in the expiry timer
    ) -> dict[str, Any]:
        """Send a CONTROL request (JSON) and return the JSON reply. `timeout` overrides the client's for slow ops."""
        payload = json.dumps(request, separators=(",", ":")).encode()
        frame = await self._future(_CONTROL, 0, 0, 0, payload, timeout=timeout)
        try:
            reply = json.loads(frame.payload or b"{}")
        except ValueError as exc:
            raise errors.ProtocolError(f"replica {self.address}: CONTROL reply is not JSON: {exc}") from exc
        if not isinstance(reply, dict):
            raise errors.ProtocolError(f"replica {self.address}: CONTROL reply is not a JSON object")
        return reply

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    @property
    def is_closed(self) -> bool:
        return self._failure is not None

    def close(self) -> None:
        """Close the connection; pending requests fail with Unavailable."""
        self.on_failure = None
        self._fail(errors.Unavailable(f"replica {self.address}: client closed"))

    async def wait_closed(self) -> None:
        if self._transport is not None:
            await self._closed

    # -- internals ------------------------------------------------------------------------------------------------

    def _future(
        self, ftype: int, flags: int, offset: int, length: int, payload: Payload | None, *, timeout: float | None = None
    ) -> asyncio.Future[codec.Frame]:
        future: asyncio.Future[codec.Frame] = self._loop.create_future()
        self._request(ftype, flags, offset, length, payload, _resolve, future, timeout=timeout)
        return future

    def _request(  # noqa: PLR0917 - private hot path, called positionally
        self,
        ftype: int,
        flags: int,
        offset: int,
        length: int,
        payload: Payload | None,
        callback: Callback,
        arg: Any,
        *,
        timeout: float | None = None,
    ) -> None:
        if self._failure is not None:
            callback(arg, None, errors.Unavailable(self._failure.message))
            return
        request_id = next(self._ids)
        self._pending[request_id] = (callback, arg, self._loop.time() + (timeout or self.timeout))
        out = self._out
        out.append(
            _pack(_MAGIC, self.version, ftype, flags, 0, request_id, offset, length, len(payload) if payload else 0)
        )
        if payload:
            out.append(payload)  # no concatenation: the payload is never copied here
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        """Send every request queued in this loop iteration with one writelines (one syscall, not one each)."""
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._failure is None and self._transport is not None:
            self._transport.writelines(out)

    def _send(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def _answer_hello(self, frame: codec.Frame) -> None:
        if frame.error:
            self._hello.set_exception(
                errors.from_code(frame.error, f"replica {self.address}: " + bytes(frame.payload).decode())
            )
        else:
            self._hello.set_result(frame)

    def _expire(self) -> None:
        """The one periodic timer: a request past its deadline means the replica stopped answering."""
        self._timer = None
        if self._failure is not None:
            return
        now = self._loop.time()
        for request_id, (_callback, _arg, deadline) in self._pending.items():
            if deadline <= now:  # also a cancelled request: the replica never answered it
                self._fail(errors.Unavailable(f"replica {self.address}: request {request_id} timed out"))
                return
        self._timer = self._loop.call_later(self._tick, self._expire)

    def _fail(self, exc: errors.MetalhornError) -> None:
        """Fail every pending request at once and close the connection (idempotent)."""
        if self._failure is not None:
            return
        self._failure = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for callback, arg, _deadline in pending.values():
            try:
                callback(arg, None, errors.Unavailable(exc.message))
            except Exception:
                log.exception("%s", logs.kv(replica=self.address, event="failure callback failed"))
        if not self._hello.done():
            self._hello.set_exception(errors.Unavailable(exc.message))
            self._hello.exception()  # connect() re-raises it when waiting; nobody else must see "never retrieved"
        if pending or self._transport is not None:
            log.debug("%s", logs.kv(replica=self.address, event="closed", reason=exc.message, failed=len(pending)))
        if self._transport is not None:
            self._transport.close()
        on_failure, self.on_failure = self.on_failure, None
        if on_failure is not None:
            on_failure(exc)


def _resolve(future: asyncio.Future[codec.Frame], frame: codec.Frame | None, exc: errors.MetalhornError | None) -> None:
    if future.done():  # the caller cancelled it
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert frame is not None
        future.set_result(frame)
