"""ReplicaClient against an in-process fake replica server: negotiation, pipelining, errors, timeouts, loss."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
from collections.abc import AsyncIterator

import pytest
from engine_fake_replica import FakeReplica

from metalhorn.common import errors
from metalhorn.storage.wire import client as wire_client
from metalhorn.storage.wire import codec


@pytest.fixture
async def replica() -> AsyncIterator[FakeReplica]:
    fake = FakeReplica(size=1 << 16)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def connect(replica: FakeReplica, request_timeout: float = 2.0) -> wire_client.ReplicaClient:
    return await wire_client.ReplicaClient.connect(replica.address, timeout=request_timeout)


async def test_write_read_round_trip(replica: FakeReplica) -> None:
    client = await connect(replica)
    try:
        assert client.version == codec.VERSION
        await client.write(4096, b"a" * 4096)
        assert await client.read(4096, 4096) == b"a" * 4096
        assert await client.read(0, 16) == bytes(16)
        await client.write_zeroes(4096, 100)
        assert await client.read(4096, 100) == bytes(100)
        await client.unmap(0, 4096)
        await client.flush()
        await client.ping()
        info = await client.control({"op": "info"})
        assert info["size"] == 1 << 16
        assert [name for name, _, _ in replica.log] == [
            "WRITE",
            "READ",
            "READ",
            "WRITE_ZEROES",
            "READ",
            "UNMAP",
            "FLUSH",
            "PING",
            "CONTROL",
        ]
    finally:
        client.close()


async def test_flags_reach_the_server(replica: FakeReplica) -> None:
    seen: list[int] = []

    def record(frame: codec.Frame) -> None:
        seen.append(frame.flags)

    replica.fault = record  # type: ignore[assignment]
    client = await connect(replica)
    try:
        await client.write(0, b"x", fua=True)
        await client.write(0, b"x")
        await client.write_zeroes(0, 10, no_hole=True)
        await client.write_zeroes(0, 10)
    finally:
        client.close()
    assert seen == [int(codec.Flags.FUA), 0, int(codec.Flags.NO_HOLE), 0]


async def test_pipelined_replies_out_of_order_reach_the_right_caller(replica: FakeReplica) -> None:
    client = await connect(replica)
    try:
        for block in range(8):
            replica.data[block * 4096 : (block + 1) * 4096] = bytes([block]) * 4096
        replica.reverse_batches = True
        futures = [client.submit_read(block * 4096, 4096) for block in range(8)]
        assert client.pending == 8
        frames = await asyncio.gather(*futures)
        assert [frame.payload[0] for frame in frames] == list(range(8))
        assert client.pending == 0
    finally:
        client.close()


async def test_error_codes_become_the_error_tree(replica: FakeReplica) -> None:
    replica.fault = lambda frame: errors.ErrorCode.NO_SPACE if frame.type == codec.FrameType.WRITE else None
    client = await connect(replica)
    try:
        with pytest.raises(errors.NoSpace):
            await client.write(0, b"x")
        assert await client.read(0, 1) == b"\0"  # the connection stays usable after an error reply
    finally:
        client.close()


async def test_silent_replica_times_out_and_fails_everything_pending(replica: FakeReplica) -> None:
    client = await connect(replica, request_timeout=0.05)
    replica.silent = True
    first = client.submit_write(0, b"x")
    second = client.submit_flush()
    with pytest.raises(errors.Unavailable, match="timed out"):
        await first
    with pytest.raises(errors.Unavailable):
        await second
    assert client.is_closed
    with pytest.raises(errors.Unavailable):
        await client.ping()  # a dead client fails new requests at once


async def test_connection_loss_fails_pending_requests_at_once(replica: FakeReplica) -> None:
    client = await connect(replica, request_timeout=30)
    replica.silent = True
    futures = [client.submit_write(0, b"x") for _ in range(5)]
    await asyncio.sleep(0)
    for _ in range(100):  # bounded: wait until the server has the requests
        if len(replica.log) == 5:
            break
        await asyncio.sleep(0.001)
    replica.drop_connections()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(result, errors.Unavailable) for result in results)
    assert client.pending == 0


async def test_cancelled_request_does_not_break_later_replies(replica: FakeReplica) -> None:
    client = await connect(replica)
    try:
        future = client.submit_read(0, 10)
        future.cancel()
        assert await client.read(0, 4) == bytes(4)
    finally:
        client.close()


async def test_unreachable_replica_is_unavailable() -> None:
    fake = FakeReplica()
    address = await fake.start()
    await fake.stop()
    with pytest.raises(errors.Unavailable, match="cannot connect"):
        await wire_client.ReplicaClient.connect(address, timeout=1)


async def test_unix_socket_and_hello_refusal() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeReplica()
        await fake.start(unix_path=pathlib.Path(tmp) / "r.sock")
        try:
            client = await wire_client.ReplicaClient.connect(fake.address, timeout=1)
            await client.ping()
            client.close()
            await client.wait_closed()
        finally:
            await fake.stop()


async def test_server_that_never_answers_hello_is_unavailable() -> None:
    finished = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1000):  # until the client gives up and closes
            pass
        writer.close()
        finished.set()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(errors.Unavailable, match="HELLO"):
            await wire_client.ReplicaClient.connect(f"127.0.0.1:{port}", timeout=0.05)
        await asyncio.wait_for(finished.wait(), 2)
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_from_the_server_closes_the_client() -> None:
    finished = asyncio.Event()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1000)
        writer.write(codec.encode(codec.Frame(codec.FrameType.HELLO, flags=codec.Flags.REPLY)))
        await reader.read(1000)
        writer.write(b"XX" + bytes(40))
        await writer.drain()
        while await reader.read(1000):  # until the client closes on the garbage
            pass
        writer.close()
        finished.set()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await wire_client.ReplicaClient.connect(f"127.0.0.1:{port}", timeout=1)
        with pytest.raises(errors.Unavailable, match="protocol error"):
            await client.ping()
        assert client.is_closed
        await asyncio.wait_for(finished.wait(), 2)
    finally:
        server.close()
        await server.wait_closed()
