"""The engine's control endpoint: newline-delimited JSON requests over a unix socket or TCP.

One request per line, one reply per line, in order, many requests per connection:

    -> {"op": "info"}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": {"code": 1, "name": "INVALID", "message": "..."}}

Codes are metalhorn.common.errors.ErrorCode values; clients decide on the code, the message is for humans. A bad
request gets an error reply and the connection keeps serving; an over-long line closes that connection only.
This is the rare-operation path, so it uses asyncio streams; the data path never comes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from metalhorn.common import addresses, errors, logs

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]


class ControlServer:
    """Serves `handlers` (op name -> function of the request returning a JSON object)."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._unix_paths: list[str] = []
        self.addresses: list[str] = []

    async def start(self, address: str) -> None:
        where = addresses.parse_address(address, what="control address")
        if where.is_unix:
            _remove_stale_socket(where.path)
            server = await asyncio.start_unix_server(self._serve, where.path, limit=MAX_LINE)
            os.chmod(where.path, 0o600)  # the control socket can reconfigure a volume: owner only
            self._unix_paths.append(where.path)
            self.addresses.append(f"unix:{where.path}")
        else:
            server = await asyncio.start_server(self._serve, where.host, where.port, limit=MAX_LINE)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.addresses.append(str(addresses.Address(host=host, port=port)))
        self._servers.append(server)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths = []

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(_encode(_error(errors.InvalidArgument(f"request longer than {MAX_LINE} bytes"))))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                writer.write(_encode(await self._answer(line)))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError as exc:
            return _error(errors.InvalidArgument(f"request is not JSON: {exc}"))
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _error(errors.InvalidArgument('request must be a JSON object with a string "op"'))
        handler = self._handlers.get(request["op"])
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return _error(errors.NotSupported(f"unknown op {request['op']!r}; known ops: {known}"))
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
        except errors.MetalhornError as exc:
            return _error(exc)
        except Exception as exc:
            log.exception("control op failed %s", logs.kv(op=request["op"]))
            return _error(errors.Internal(f"op {request['op']!r} failed: {type(exc).__name__}: {exc}"))
        return {"ok": True, "result": result}


async def request(address: str, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
    """Send one control request and return its result; an error reply is raised as the error of its code."""
    where = addresses.parse_address(address, what="control address")
    try:
        async with asyncio.timeout(timeout):
            if where.is_unix:
                reader, writer = await asyncio.open_unix_connection(where.path, limit=MAX_LINE)
            else:
                reader, writer = await asyncio.open_connection(where.host, where.port, limit=MAX_LINE)
            try:
                writer.write(_encode(payload))
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise errors.Unavailable(f"control endpoint {address} did not answer within {timeout}s") from None
    except OSError as exc:
        raise errors.Unavailable(f"cannot reach control endpoint {address}: {exc.strerror or exc}") from exc
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise errors.ProtocolError(f"control endpoint {address} sent a reply that is not JSON") from exc
    if not isinstance(reply, dict):
        raise errors.ProtocolError(f"control endpoint {address} sent a reply that is not a JSON object")
    if reply.get("ok"):
        result = reply.get("result")
        return result if isinstance(result, dict) else {}
    error = reply.get("error") or {}
    raise errors.from_code(int(error.get("code", errors.ErrorCode.INTERNAL)), str(error.get("message", "")))


def _error(exc: errors.MetalhornError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": int(exc.code), "name": exc.code.name, "message": exc.message}}


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a killed engine would make bind fail; remove it, but never a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise errors.AlreadyExists(f"control path {path} exists and is not a socket")
    os.unlink(path)
