"""NBD server: the asyncio shell around metalhorn.storage.nbd that serves one BlockDevice.

    server = NbdServer(device, export_name="vol1")
    await server.start(parse_address("127.0.0.1:0"))   # or unix:/run/vol1.sock
    ... server.addresses ...
    server.close(); await server.wait_closed()

One asyncio.Protocol per client; any number of clients at once (we advertise CAN_MULTI_CONN: all of them
talk to the same device, whose flush covers every connection). Requests of one connection run concurrently
and are answered in completion order. Each request becomes a task the moment it is parsed, so tasks start --
and call into the device up to its first await -- in arrival order: writes, trims and flushes are *issued* to
the device in the order the client sent them, and the device keeps that order from there.

Replies finished in the same loop iteration go out in one ``writelines`` call. Backpressure: when
``max_in_flight`` requests are running, or the transport's write buffer is full, we stop parsing and pause
reading. A protocol violation closes that connection only, with a warning in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import typing

from metalhorn.common import errors
from metalhorn.common.addresses import Address
from metalhorn.common.logs import kv
from metalhorn.storage.blockdev import BlockDevice
from metalhorn.storage.nbd import connection, constants, events, messages

log = logging.getLogger(__name__)

_Cmd = constants.Cmd
_simple_reply = messages.simple_reply


class NbdServer:
    """Serves ``device`` as the single export ``export_name`` (the empty name reaches it too)."""

    def __init__(
        self,
        device: BlockDevice,
        *,
        export_name: str,
        description: str = "",
        max_in_flight: int = 128,
    ) -> None:
        # Validate the name once, here, rather than at every connection.
        connection.Export(name=export_name, size=0, description=description)
        if max_in_flight < 1:
            raise errors.InvalidArgument(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.device = device
        self.export_name = export_name
        self.description = description
        self.max_in_flight = max_in_flight
        self._server: asyncio.Server | None = None
        self._unix_path = ""
        self._clients: set[_ClientProtocol] = set()
        self._closing = False

    async def start(self, address: Address) -> None:
        """Listen on a TCP host:port (port 0 picks a free port, see ``addresses``) or a unix socket path."""
        if self._server is not None:
            raise errors.Internal("NbdServer.start() called twice")
        loop = asyncio.get_running_loop()
        try:
            if address.is_unix:
                self._server = await loop.create_unix_server(self._new_client, path=address.path)
                self._unix_path = address.path
            else:
                self._server = await loop.create_server(self._new_client, host=address.host or None, port=address.port)
        except OSError as exc:
            raise errors.InvalidArgument(f"cannot listen on {address}: {exc.strerror or exc}") from exc
        log.info("nbd server listening %s", kv(export=self.export_name, address=_render(self.addresses)))

    @property
    def addresses(self) -> list[Address]:
        """Where the server listens (the bound ports, after port 0)."""
        if self._server is None:
            return []
        out = []
        for sock in self._server.sockets:
            name = sock.getsockname()
            if sock.family == socket.AF_UNIX:
                out.append(Address(path=name if isinstance(name, str) else name.decode()))
            else:
                out.append(Address(host=name[0], port=name[1]))
        return out

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """Stop accepting; let every client finish its in-flight requests, then disconnect it."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._unix_path:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(self._unix_path).st_mode):
                    os.unlink(self._unix_path)
        for client in list(self._clients):
            client.shutdown()

    async def wait_closed(self) -> None:
        """Wait until the listener and every client connection are gone (bound this with a timeout)."""
        if self._server is not None:
            await self._server.wait_closed()
        while self._clients:
            await asyncio.gather(*(client.closed for client in list(self._clients)))

    def _new_client(self) -> _ClientProtocol:
        client = _ClientProtocol(self)
        self._clients.add(client)
        return client

    def _forget(self, client: _ClientProtocol) -> None:
        self._clients.discard(client)


class _ClientProtocol(asyncio.Protocol):
    """One client connection: feeds bytes to a ServerConnection and runs its commands on the device."""

    def __init__(self, server: NbdServer) -> None:
        self._server = server
        self._device = server.device
        self._max_in_flight = server.max_in_flight
        self._loop = asyncio.get_running_loop()
        self._conn: connection.ServerConnection | None = None
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled = False  # stopped parsing because of max_in_flight; resume when a request finishes
        self._reading_paused = False
        self._writing_paused = False
        self._draining = False  # NBD_CMD_DISC or server shutdown: finish in-flight requests, then close
        self._lost = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.requests = 0
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = _peer_name(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self._server
        export = connection.Export(name=server.export_name, size=self._device.size, description=server.description)
        self._conn = connection.ServerConnection(export)
        if server._closing:
            self._conn.begin_shutdown()
        log.info("nbd client connected %s", kv(peer=self._peer, export=server.export_name))
        transport.write(self._conn.initiate())

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self._draining:
            return
        conn.feed(data)
        self._pump()

    def eof_received(self) -> bool:
        return False  # close our side too; in-flight requests finish, their replies are dropped

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._conn is not None:
            self._conn.close()
        log.info(
            "nbd client disconnected %s",
            kv(peer=self._peer, requests=self.requests, in_flight=self._in_flight, error=exc or "-"),
        )
        self._maybe_finished()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()
        if self._stalled:
            self._pump()

    # -- parsing -------------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Turn buffered bytes into running requests until the in-flight limit is reached."""
        conn = self._conn
        assert conn is not None
        self._stalled = False
        try:
            while not self._draining:
                if self._in_flight >= self._max_in_flight or self._writing_paused:
                    self._stalled = True
                    break
                event = conn.next_event()
                if event is None:
                    break
                if type(event) is events.Command:
                    self._start(event)
                else:
                    self._handle_event(event)
        except errors.ProtocolError as exc:
            log.warning("nbd protocol error, closing connection %s", kv(peer=self._peer, error=exc.message))
            self._queue(conn.data_to_send())
            self._flush()
            self._close()
            return
        pending = conn.data_to_send()
        if pending:
            self._queue(pending)
            self._flush()
        self._update_reading()

    def _handle_event(self, event: events.Event) -> None:
        if isinstance(event, events.Answered):
            if event.error:
                log.debug(
                    "nbd request refused %s",
                    kv(peer=self._peer, type=event.type, error=event.error.name, reason=event.reason),
                )
        elif isinstance(event, events.Negotiated):
            log.info(
                "nbd client negotiated %s",
                kv(peer=self._peer, export=event.export_name, size=event.size, via=event.option.name),
            )
        elif isinstance(event, events.OptionRequest):
            log.debug("nbd option %s", kv(peer=self._peer, option=event.option, length=event.length))
        elif isinstance(event, events.Disconnect):
            assert self._conn is not None
            self._queue(self._conn.data_to_send())  # the ACK of NBD_OPT_ABORT goes out before we close
            self._draining = True
            self._maybe_close_drained()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            return
        pause = self._draining or self._stalled or self._writing_paused
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # -- requests ------------------------------------------------------------------------------------------

    def _start(self, command: events.Command) -> None:
        self._in_flight += 1
        self.requests += 1
        # The task's first step runs in creation order, so the device sees requests in arrival order.
        task = self._loop.create_task(self._execute(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, command: events.Command) -> None:
        device = self._device
        kind = command.type
        data: bytes | None = None
        error = 0
        try:
            if kind is _Cmd.READ:
                data = await device.read(command.offset, command.length)
                if len(data) != command.length:
                    raise errors.Internal(f"device returned {len(data)} bytes for a read of {command.length}")
            elif kind is _Cmd.WRITE:
                await device.write(command.offset, command.data, fua=command.fua)
            elif kind is _Cmd.FLUSH:
                await device.flush()
            elif kind is _Cmd.TRIM:
                await device.trim(command.offset, command.length)
                if command.fua:
                    await device.flush()
            elif kind is _Cmd.WRITE_ZEROES:
                await device.write_zeroes(command.offset, command.length, may_trim=not command.no_hole)
                if command.fua:
                    await device.flush()
            else:  # the connection only emits the commands above
                raise errors.Internal(f"unexpected NBD command {kind!r}")
        except errors.MetalhornError as exc:
            error = messages.errno_for(exc)
            log.debug(
                "nbd request failed %s",
                kv(peer=self._peer, type=kind.name, offset=command.offset, length=command.length, error=exc.code.name),
            )
        except Exception:
            error = constants.Errno.EIO
            log.exception("nbd request crashed %s", kv(peer=self._peer, type=kind.name, offset=command.offset))
        finally:
            self._in_flight -= 1
        if error or data is None:
            self._queue_one(_simple_reply(command.cookie, error))
        else:
            self._out.append(_simple_reply(command.cookie))
            self._queue_one(data)
        if self._stalled and not self._draining and not self._lost:
            self._pump()
        elif self._draining or self._lost:
            self._maybe_close_drained()
            self._maybe_finished()

    # -- output --------------------------------------------------------------------------------------------

    def _queue_one(self, chunk: bytes) -> None:
        self._out.append(chunk)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _queue(self, chunks: list[bytes]) -> None:
        self._out.extend(chunks)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.writelines(out)

    # -- closing -------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Server shutdown: refuse new work, finish what runs, then close."""
        if self._conn is not None:
            self._conn.begin_shutdown()
        self._draining = True
        self._update_reading()
        self._maybe_close_drained()

    def _maybe_close_drained(self) -> None:
        if self._draining and self._in_flight == 0:
            self._flush()
            self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        elif self._transport is None:
            self._maybe_finished()

    def _maybe_finished(self) -> None:
        if (self._lost or self._transport is None) and self._in_flight == 0 and not self.closed.done():
            self.closed.set_result(None)
            self._server._forget(self)


def _peer_name(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return "unix" if not peer else str(peer)


def _render(addresses: list[Address]) -> str:
    return ",".join(str(a) for a in addresses) or "-"
