"""An in-process fake replica server for engine and client tests, built on the real frame codec.

It keeps the volume in a bytearray, counts a revision per write, and lets a test inject faults: an error code per
request (`fault`), swallowing requests without replying (`silent`), or holding replies and sending them in
reverse order (`reverse_batches`) to exercise out-of-order completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import typing
from collections.abc import Callable
from typing import Any

from metalhorn.common import errors
from metalhorn.storage.wire import codec

T = codec.FrameType


class FakeReplica:
    def __init__(
        self,
        size: int = 1 << 20,
        *,
        revision: int = 1,
        chain: list[str] | None = None,
        head: str = "volume-head-000.img",
        info_extra: dict[str, Any] | None = None,
    ) -> None:
        self.size = size
        self.data = bytearray(size)
        self.revision = revision
        self.head = head
        self.chain = list(chain) if chain is not None else [head]
        self.info_extra = dict(info_extra or {})
        self.log: list[tuple[str, int, int]] = []  # (type name, offset, length) of every request served
        self.fault: Callable[[codec.Frame], errors.ErrorCode | None] | None = None
        self.silent = False
        self.reverse_batches = False
        self.server: asyncio.base_events.Server | None = None
        self.connections: list[_Conn] = []
        self.address = ""

    async def start(self, *, unix_path: pathlib.Path | None = None) -> str:
        loop = asyncio.get_running_loop()
        if unix_path is not None:
            self.server = await loop.create_unix_server(lambda: _Conn(self), str(unix_path))
            self.address = f"unix:{unix_path}"
        else:
            self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
            port = self.server.sockets[0].getsockname()[1]
            self.address = f"tcp://127.0.0.1:{port}"
        return self.address

    def drop_connections(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.abort()

    async def stop(self) -> None:
        self.drop_connections()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def info(self) -> dict[str, Any]:
        return {"size": self.size, "revision": self.revision, "chain": self.chain, "head": self.head, **self.info_extra}

    def handle(self, frame: codec.Frame) -> codec.Frame | None:
        self.log.append((T(frame.type).name, frame.offset, frame.length))
        if self.silent:
            return None
        if self.fault is not None:
            code = self.fault(frame)
            if code is not None:
                return codec.error_reply(frame, errors.from_code(code, f"injected {code.name}"))
        if frame.type == T.READ:
            return frame.reply(payload=bytes(self.data[frame.offset : frame.offset + frame.length]))
        if frame.type == T.WRITE:
            self.data[frame.offset : frame.offset + len(frame.payload)] = frame.payload
            self.revision += 1
            return frame.reply()
        if frame.type in (T.UNMAP, T.WRITE_ZEROES):
            self.data[frame.offset : frame.offset + frame.length] = bytes(frame.length)
            self.revision += 1
            return frame.reply()
        if frame.type in (T.FLUSH, T.PING):
            return frame.reply()
        if frame.type == T.CONTROL:
            request = json.loads(frame.payload)
            if request.get("op") == "info":
                return frame.reply(payload=json.dumps(self.info()).encode())
            return codec.error_reply(frame, errors.NotSupported(f"unknown op {request.get('op')!r}"))
        return codec.error_reply(frame, errors.ProtocolError("unexpected frame"))


class _Conn(asyncio.Protocol):
    def __init__(self, replica: FakeReplica) -> None:
        self.replica = replica
        self.decoder = codec.Decoder()
        self.transport: asyncio.Transport | None = None
        self.hello_done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.replica.connections.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        with contextlib.suppress(ValueError):
            self.replica.connections.remove(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        replies = []
        for frame in self.decoder.feed(data):
            if not self.hello_done:
                assert frame.type == T.HELLO
                version = codec.negotiate(frame.payload)
                self.hello_done = True
                reply = frame.reply()
                reply.version = version
                self.transport.write(codec.encode(reply))
                continue
            answer = self.replica.handle(frame)
            if answer is not None:
                replies.append(codec.encode(answer))
        if self.replica.reverse_batches:
            replies.reverse()
        if replies:
            self.transport.writelines(replies)
