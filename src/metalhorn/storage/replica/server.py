"""The replica server: the replica protocol (storage/wire/codec.py) over TCP or a unix socket, onto a ReplicaStore.

One asyncio.Protocol per connection. Each ``data_received`` batch is decoded and executed in order,
synchronously against the store (page-cache I/O), its replies collected; if the batch modified data the revision
counter is persisted once, and only then are the replies sent with one ``writelines`` — a write is never
acknowledged before its revision is on disk (in the page cache, like the data; FLUSH makes both durable).

FLUSH is the only slow request: it persists the revision counter and runs fsync in a worker thread, replying when
that finishes. Because every earlier frame was already executed, the fsync covers every write received before the
FLUSH. Replies may therefore leave out of order, which the protocol allows (request ids match them).

A peer that breaks the protocol (garbage, oversized frames, no HELLO first) loses only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from typing import Any, cast

from metalhorn.common import addresses, errors
from metalhorn.common.logs import kv
from metalhorn.storage.replica import snapshots as history
from metalhorn.storage.replica import sync as rebuild_sync
from metalhorn.storage.replica.store import ReplicaStore
from metalhorn.storage.wire import codec

log = logging.getLogger(__name__)

_HELLO = codec.FrameType.HELLO
_READ = codec.FrameType.READ
_WRITE = codec.FrameType.WRITE
_UNMAP = codec.FrameType.UNMAP
_WRITE_ZEROES = codec.FrameType.WRITE_ZEROES
_FLUSH = codec.FrameType.FLUSH
_CONTROL = codec.FrameType.CONTROL
_PING = codec.FrameType.PING
_FILE_OPS = frozenset((codec.FrameType.FILE_READ, codec.FrameType.FILE_WRITE, codec.FrameType.FILE_CHECKSUM))
_MODIFYING = frozenset((_WRITE, _UNMAP, _WRITE_ZEROES))


class ReplicaServer:
    """Serves one ReplicaStore to any number of connections (the engine usually opens one or a few)."""

    def __init__(self, store: ReplicaStore) -> None:
        self.store = store
        self.history = history.ReplicaHistory(store)  # snap.* CONTROL ops
        self.sync = rebuild_sync.ReplicaSync(self)  # sync_* CONTROL ops and FILE_* frames of a rebuild
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._flushes: set[asyncio.Future[Any]] = set()  # flushes, FILE_* requests and history ops in threads
        self._unix_path = ""
        self.address = ""

    async def start(self, listen: str | addresses.Address) -> str:
        """Bind and start accepting; returns the bound address (the real port when 0 was asked)."""
        where = listen if isinstance(listen, addresses.Address) else addresses.parse_address(listen, what="--listen")
        loop = asyncio.get_running_loop()
        try:
            if where.is_unix:
                _remove_stale_socket(where.path)
                self._server = await loop.create_unix_server(lambda: _Connection(self), where.path)
                self._unix_path = where.path
                self.address = f"unix:{where.path}"
            else:
                self._server = await loop.create_server(
                    lambda: _Connection(self), where.host, where.port, reuse_address=True
                )
                host, port = self._server.sockets[0].getsockname()[:2]
                self.address = str(addresses.Address(host=host, port=port))
        except OSError as exc:
            raise errors.Unavailable(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        log.info("replica listening %s", kv(address=self.address, dir=self.store.directory))
        return self.address

    async def close(self) -> None:
        """Stop accepting, drop connections, and wait for flushes in progress (so the store can be closed)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._flushes:
            await asyncio.wait(list(self._flushes))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._unix_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
            self._unix_path = ""

    def _flush(self) -> asyncio.Future[None]:
        self.store.persist_revision()
        future = asyncio.get_running_loop().run_in_executor(None, self.store.sync)
        self._flushes.add(future)
        future.add_done_callback(self._flushes.discard)
        return future


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a crashed server would make bind fail; anything else at the path is kept."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        os.unlink(path)


class _Connection(asyncio.Protocol):
    def __init__(self, server: ReplicaServer) -> None:
        self._server = server
        self._store = server.store
        self._sync = server.sync
        self._decoder = codec.Decoder()
        self._transport: asyncio.Transport | None = None
        self._version = 0  # 0 until HELLO
        self._peer = "?"

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = _format_peer(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server._connections.add(self)
        log.info("replica client connected %s", kv(peer=self._peer))

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        log.info("replica client disconnected %s", kv(peer=self._peer, error=exc or "none"))

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its requests until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            frames = self._decoder.feed(data)
        except errors.ProtocolError as exc:
            self._protocol_error(exc)
            return
        replies: list[codec.Frame] = []
        modifying: list[tuple[int, codec.Frame]] = []
        for frame in frames:
            if not self._version:
                if not self._hello(frame, replies):
                    return
                continue
            if frame.is_reply:
                replies.append(codec.error_reply(frame, errors.InvalidArgument("replica got a reply frame")))
                continue
            reply = self._execute(frame)
            if reply is None:
                continue
            if frame.type in _MODIFYING and not reply.error:
                modifying.append((len(replies), frame))
            replies.append(reply)
        if modifying:
            try:
                self._store.persist_revision()
            except errors.MetalhornError as exc:
                log.error("revision counter not persisted %s", kv(dir=self._store.directory, error=exc.message))
                for index, frame in modifying:
                    replies[index] = codec.error_reply(frame, exc)
        if replies:
            self._send(replies)

    # -- requests ---------------------------------------------------------------------------------------------

    def _hello(self, frame: codec.Frame, replies: list[codec.Frame]) -> bool:
        if frame.type != _HELLO or frame.is_reply:
            self._protocol_error(errors.ProtocolError(f"first frame must be HELLO, got {frame.type.name}"))
            return False
        try:
            version = codec.negotiate(frame.payload)
        except errors.NotSupported as exc:
            log.warning("replica client refused %s", kv(peer=self._peer, error=exc.message))
            self._send([*replies, codec.error_reply(frame, exc)])
            if self._transport is not None:
                self._transport.close()
            return False
        self._version = version
        reply = frame.reply()
        reply.version = version
        replies.append(reply)
        return True

    def _execute(self, frame: codec.Frame) -> codec.Frame | None:
        """Run one request; returns its reply, or None when the reply comes later (FLUSH)."""
        store = self._store
        ftype = frame.type
        try:
            if ftype == _READ:
                return frame.reply(payload=store.read(frame.offset, frame.length))  # type: ignore[arg-type]
            if ftype == _WRITE:
                if self._sync.masks is not None:  # rebuilding: note partial-block writes (replica/sync.py)
                    self._sync.note_write(frame.offset, len(frame.payload))
                store.write(frame.offset, frame.payload, fua=bool(frame.flags & codec.FLAG_FUA))
                return frame.reply(length=len(frame.payload))
            if ftype == _UNMAP:
                store.unmap(frame.offset, frame.length)
                return frame.reply()
            if ftype == _WRITE_ZEROES:
                if self._sync.masks is not None:
                    self._sync.note_write(frame.offset, frame.length)
                store.write_zeroes(frame.offset, frame.length, no_hole=bool(frame.flags & codec.FLAG_NO_HOLE))
                return frame.reply()
            if ftype == _FLUSH:
                self._server._flush().add_done_callback(lambda fut: self._flushed(frame, fut))
                return None
            if ftype == _PING:
                return frame.reply()
            if ftype == _CONTROL:
                result = self._control(frame.payload)
                if isinstance(result, asyncio.Future):  # slow history op running in a worker thread
                    self._server._flushes.add(result)
                    result.add_done_callback(self._server._flushes.discard)
                    result.add_done_callback(lambda fut: self._controlled(frame, fut))
                    return None
                return frame.reply(payload=json.dumps(result, separators=(",", ":")).encode())
            if ftype in _FILE_OPS:
                done = self._sync.submit(frame)
                self._server._flushes.add(done)
                done.add_done_callback(self._server._flushes.discard)
                done.add_done_callback(lambda fut: self._file_done(frame, fut))
                return None
            raise errors.InvalidArgument(f"unexpected {ftype.name} frame after HELLO")
        except errors.MetalhornError as exc:
            return codec.error_reply(frame, exc)
        except Exception as exc:
            log.exception("replica request failed %s", kv(type=ftype.name, id=frame.request_id))
            return codec.error_reply(frame, errors.Internal(f"{ftype.name} failed: {exc!r}"))

    def _flushed(self, frame: codec.Frame, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            reply = codec.error_reply(frame, errors.Unavailable("flush cancelled: the replica is shutting down"))
        elif (exc := future.exception()) is not None:
            error = exc if isinstance(exc, errors.MetalhornError) else errors.StorageIOError(f"flush failed: {exc!r}")
            reply = codec.error_reply(frame, error)
        else:
            reply = frame.reply()
        self._send([reply])

    def _file_done(self, frame: codec.Frame, future: asyncio.Future[bytes]) -> None:
        if future.cancelled():
            reply = codec.error_reply(frame, errors.Unavailable("cancelled: the replica is shutting down"))
        elif (exc := future.exception()) is not None:
            error = exc if isinstance(exc, errors.MetalhornError) else errors.Internal(f"{frame.type.name}: {exc!r}")
            reply = codec.error_reply(frame, error)
        else:
            reply = frame.reply(payload=future.result())
        self._send([reply])

    def _controlled(self, frame: codec.Frame, future: asyncio.Future[dict[str, Any]]) -> None:
        if future.cancelled():
            reply = codec.error_reply(frame, errors.Unavailable("cancelled: the replica is shutting down"))
        elif (exc := future.exception()) is not None:
            error = exc if isinstance(exc, errors.MetalhornError) else errors.Internal(f"control op failed: {exc!r}")
            reply = codec.error_reply(frame, error)
        else:
            reply = frame.reply(payload=json.dumps(future.result(), separators=(",", ":")).encode())
        self._send([reply])

    def _control(self, payload: bytes) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        try:
            request = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise errors.InvalidArgument("CONTROL payload is not JSON") from None
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise errors.InvalidArgument('CONTROL payload must be a JSON object with a string "op"')
        op = request["op"]
        if op == "info":
            return {**self._store.info(), "unclean": self._sync.unclean}
        if op.startswith("sync_"):
            return self._sync.control(request)
        if op == "snapshot":
            name = request.get("name")
            labels = request.get("labels") or {}
            if not isinstance(name, str):
                raise errors.InvalidArgument('snapshot needs a string "name"')
            if self._sync.rebuilding:
                raise errors.Conflict("replica is being rebuilt; snapshot it after the rebuild (replica/sync.py)")
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise errors.InvalidArgument('snapshot "labels" must map strings to strings')
            created = request.get("created")
            snap = self._store.snapshot(
                name,
                user_created=bool(request.get("user_created", True)),
                labels=labels,
                created=created if isinstance(created, str) else None,
            )
            return {"snapshot": snap, "head": self._store.head, "chain": self._store.chain}
        if op.startswith(history.OP_PREFIX):
            return self._server.history.handle(request)
        raise errors.NotSupported(f"unknown CONTROL op {op!r}")

    # -- output -----------------------------------------------------------------------------------------------

    def _send(self, replies: list[codec.Frame]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        buffers: list[bytes] = []
        for reply in replies:
            buffers.append(codec.encode_header(reply))
            if reply.payload:
                buffers.append(reply.payload)
        transport.writelines(buffers)

    def _protocol_error(self, exc: errors.MetalhornError) -> None:
        log.warning("replica client broke the protocol; closing %s", kv(peer=self._peer, error=exc.message))
        self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _format_peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer) or "unix"
