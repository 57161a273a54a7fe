"""The agent's own small HTTP endpoint: `GET /healthz` and `GET /metrics` (Prometheus text), read-only.

Deliberately tiny (one request per connection, GET only): it exists so supervisors and Prometheus can look at
an agent; everything that changes state goes through the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from metalhorn.common import metrics

MAX_REQUEST = 8192


class StatusServer:
    def __init__(self, *, metrics: Callable[[], str], healthy: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._healthy = healthy
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) >= 2 else (b"", b"")
            if method != b"GET":
                status, body, kind = "405 Method Not Allowed", "GET only\n", "text/plain"
            elif path == b"/healthz":
                ok = self._healthy()
                status, body, kind = (
                    ("200 OK" if ok else "503 Service Unavailable"),
                    ("ok\n" if ok else "not synced\n"),
                    "text/plain",
                )
            elif path == b"/metrics":
                status, body, kind = "200 OK", self._metrics(), metrics.CONTENT_TYPE
            else:
                status, body, kind = "404 Not Found", "try /healthz or /metrics\n", "text/plain"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
