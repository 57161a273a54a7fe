"""The replica server spoken to with raw codec frames over loopback TCP and unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import random
from collections.abc import AsyncIterator

import pytest

from metalhorn.common import errors
from metalhorn.storage.replica.server import ReplicaServer
from metalhorn.storage.replica.store import ReplicaStore
from metalhorn.storage.wire import codec
from metalhorn.storage.wire.codec import Flags, Frame, FrameType

SIZE = 8 << 20
BS = 4096
TIMEOUT = 10.0


class RawClient:
    """Just enough of a client: send frames, collect replies by request id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = codec.Decoder()
        self.replies: dict[int, Frame] = {}

    @classmethod
    async def connect(cls, address: str) -> RawClient:
        if address.startswith("unix:"):
            reader, writer = await asyncio.open_unix_connection(address[5:])
        else:
            host, _, port = address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(codec.encode(f) for f in frames))

    async def receive(self, *ids: int) -> list[Frame]:
        async with asyncio.timeout(TIMEOUT):
            while not all(i in self.replies for i in ids):
                data = await self.reader.read(1 << 20)
                if not data:
                    raise ConnectionError("server closed the connection")
                for frame in self.decoder.feed(data):
                    assert frame.is_reply
                    self.replies[frame.request_id] = frame
        return [self.replies.pop(i) for i in ids]

    async def hello(self) -> Frame:
        self.send(codec.hello())
        (reply,) = await self.receive(0)
        return reply

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    data = await self.reader.read(1 << 16)
                except ConnectionResetError:
                    return True
                if not data:
                    return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def served(tmp_path: pathlib.Path) -> AsyncIterator[tuple[ReplicaServer, ReplicaStore]]:
    store = ReplicaStore.open(tmp_path / "r", size=SIZE)
    server = ReplicaServer(store)
    try:
        await server.start("127.0.0.1:0")
        yield server, store
    finally:
        await server.close()
        store.close()


async def test_hello_then_pipelined_writes_and_reads(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    server, store = served
    client = await RawClient.connect(server.address)
    try:
        hello = await client.hello()
        assert hello.type == FrameType.HELLO and hello.error == 0 and hello.version == codec.VERSION
        frames = []
        for i in range(1, 33):
            frames.append(Frame(FrameType.WRITE, request_id=i, offset=i * 64 * 1024, payload=bytes([i]) * 65536))
        for i in range(1, 33):
            frames.append(Frame(FrameType.READ, request_id=100 + i, offset=i * 64 * 1024, length=65536))
        client.send(*frames)
        writes = await client.receive(*range(1, 33))
        assert all(r.error == 0 and r.type == FrameType.WRITE for r in writes)
        reads = await client.receive(*range(101, 133))
        for i, r in enumerate(reads, start=1):
            assert r.error == 0 and r.payload == bytes([i]) * 65536
        assert store.revision == 32
        counter = (pathlib.Path(store.directory) / "revision.counter").read_bytes()
        assert counter.rstrip(b"\x00") == b"32"
    finally:
        await client.close()


async def test_unaligned_unmap_zeroes_flush_ping(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    server, _store = served
    client = await RawClient.connect(server.address)
    try:
        await client.hello()
        client.send(
            Frame(FrameType.WRITE, request_id=1, offset=10, payload=b"hello", flags=Flags.FUA),
            Frame(FrameType.WRITE, request_id=2, offset=BS, payload=b"\x07" * (4 * BS)),
            Frame(FrameType.UNMAP, request_id=3, offset=BS, length=BS),
            Frame(FrameType.WRITE_ZEROES, request_id=4, offset=2 * BS, length=BS, flags=Flags.NO_HOLE),
            Frame(FrameType.FLUSH, request_id=5),
            Frame(FrameType.PING, request_id=6),
            Frame(FrameType.READ, request_id=7, offset=0, length=5 * BS),
        )
        replies = await client.receive(1, 2, 3, 4, 5, 6, 7)
        assert [r.error for r in replies] == [0] * 7
        data = replies[-1].payload
        assert data[10:15] == b"hello"
        assert data[BS : 3 * BS] == bytes(2 * BS)
        assert data[3 * BS :] == b"\x07" * (2 * BS)
    finally:
        await client.close()


async def test_errors_travel_as_codes(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    server, _store = served
    client = await RawClient.connect(server.address)
    try:
        await client.hello()
        client.send(
            Frame(FrameType.READ, request_id=1, offset=SIZE, length=BS),
            Frame(FrameType.WRITE, request_id=2, offset=SIZE - 1, payload=b"xy"),
            Frame(FrameType.CONTROL, request_id=3, payload=b"not json"),
            Frame(FrameType.CONTROL, request_id=4, payload=b'{"op":"nope"}'),
            Frame(FrameType.HELLO, request_id=5, payload=b"\x01"),
            Frame(FrameType.PING, request_id=6),
        )
        replies = await client.receive(1, 2, 3, 4, 5, 6)
        assert [r.error for r in replies] == [
            errors.ErrorCode.OUT_OF_RANGE,
            errors.ErrorCode.OUT_OF_RANGE,
            errors.ErrorCode.INVALID,
            errors.ErrorCode.NOT_SUPPORTED,
            errors.ErrorCode.INVALID,
            0,
        ]
        with pytest.raises(errors.OutOfRange):
            codec.raise_for_error(replies[0])
    finally:
        await client.close()


async def test_control_info_and_snapshot(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    server, store = served
    client = await RawClient.connect(server.address)
    try:
        await client.hello()
        client.send(
            Frame(FrameType.WRITE, request_id=1, offset=0, payload=b"\x01" * BS),
            Frame(FrameType.CONTROL, request_id=2, payload=b'{"op":"snapshot","name":"s1","labels":{"a":"b"}}'),
            Frame(FrameType.CONTROL, request_id=3, payload=b'{"op":"snapshot","name":"s1"}'),
            Frame(FrameType.WRITE_ZEROES, request_id=4, offset=0, length=BS),
            Frame(FrameType.CONTROL, request_id=5, payload=b'{"op":"info"}'),
            Frame(FrameType.READ, request_id=6, offset=0, length=BS),
        )
        replies = await client.receive(1, 2, 3, 4, 5, 6)
        assert replies[1].error == 0
        assert json.loads(replies[1].payload)["snapshot"] == "volume-snap-s1.img"
        assert replies[2].error == errors.ErrorCode.ALREADY_EXISTS
        info = json.loads(replies[4].payload)
        assert info["chain"] == ["volume-snap-s1.img", "volume-head-001.img"]
        assert info["head"] == "volume-head-001.img" and info["size"] == SIZE and info["revision"] == 2
        assert replies[5].payload == bytes(BS)  # zeros in the head hide the snapshot
        assert store.chain == info["chain"]
    finally:
        await client.close()


async def test_first_frame_must_be_hello(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    server, _store = served
    client = await RawClient.connect(server.address)
    try:
        client.send(Frame(FrameType.PING, request_id=1))
        assert await client.closed_by_server()
    finally:
        await client.close()


async def test_hello_without_common_version_is_refused(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    server, _store = served
    client = await RawClient.connect(server.address)
    try:
        client.send(Frame(FrameType.HELLO, request_id=0, payload=bytes([99, 200])))
        (reply,) = await client.receive(0)
        assert reply.error == errors.ErrorCode.NOT_SUPPORTED
        assert await client.closed_by_server()
    finally:
        await client.close()


@pytest.mark.parametrize("seed", range(5))
async def test_garbage_closes_only_that_connection(served: tuple[ReplicaServer, ReplicaStore], seed: int) -> None:
    server, _store = served
    good = await RawClient.connect(server.address)
    bad = await RawClient.connect(server.address)
    try:
        await good.hello()
        if seed % 2:
            await bad.hello()  # garbage after a proper start, too
        rng = random.Random(seed)
        garbage = bytes(rng.randrange(256) for _ in range(256))
        if seed == 4:  # a well-formed header announcing an oversized payload
            garbage = codec.HEADER.pack(codec.MAGIC, 1, FrameType.WRITE, 0, 0, 9, 0, 0, codec.MAX_PAYLOAD + 1)
        bad.writer.write(garbage if garbage[:2] != codec.MAGIC else b"XX" + garbage)
        assert await bad.closed_by_server()
        good.send(
            Frame(FrameType.WRITE, request_id=1, payload=b"still here"), Frame(FrameType.READ, request_id=2, length=10)
        )
        _w, r = await good.receive(1, 2)
        assert r.payload == b"still here"
        third = await RawClient.connect(server.address)
        try:
            assert (await third.hello()).error == 0
        finally:
            await third.close()
    finally:
        await good.close()
        await bad.close()


async def test_unix_socket(tmp_path: pathlib.Path) -> None:
    store = ReplicaStore.open(tmp_path / "r", size=SIZE)
    server = ReplicaServer(store)
    path = tmp_path / "replica.sock"
    try:
        address = await server.start(f"unix:{path}")
        assert address == f"unix:{path}"
        client = await RawClient.connect(address)
        try:
            await client.hello()
            client.send(
                Frame(FrameType.WRITE, request_id=1, payload=b"u"), Frame(FrameType.READ, request_id=2, length=1)
            )
            assert (await client.receive(1, 2))[1].payload == b"u"
        finally:
            await client.close()
    finally:
        await server.close()
        store.close()
    assert not path.exists()


async def test_wire_client_interoperates(served: tuple[ReplicaServer, ReplicaStore]) -> None:
    """The engine's ReplicaClient against this server: the two sides agree on the codec."""
    from metalhorn.storage.wire.client import ReplicaClient

    server, _store = served
    client = await ReplicaClient.connect(server.address, timeout=TIMEOUT)
    try:
        await client.write(BS + 1, b"abc", fua=True)
        await client.write_zeroes(0, BS, no_hole=True)
        await client.unmap(8 * BS, BS)
        await client.flush()
        await client.ping()
        assert await client.read(BS, 8) == b"\x00abc\x00\x00\x00\x00"
        info = await client.control({"op": "info"})
        assert info["revision"] == 3 and info["size"] == SIZE
        with pytest.raises(errors.OutOfRange):
            await client.read(SIZE, 1)
    finally:
        client.close()
        await client.wait_closed()


def test_under_uvloop(tmp_path: pathlib.Path) -> None:
    """The daemons run uvloop, whose transports are not asyncio.Transport subclasses."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> bytes:
        store = ReplicaStore.open(tmp_path / "r", size=SIZE)
        server = ReplicaServer(store)
        try:
            await server.start("127.0.0.1:0")
            client = await RawClient.connect(server.address)
            try:
                await client.hello()
                client.send(
                    Frame(FrameType.WRITE, request_id=1, payload=b"uv"),
                    Frame(FrameType.FLUSH, request_id=2),
                    Frame(FrameType.READ, request_id=3, length=2),
                )
                return (await client.receive(1, 2, 3))[2].payload
            finally:
                await client.close()
        finally:
            await server.close()
            store.close()

    assert uvloop.run(scenario()) == b"uv"
