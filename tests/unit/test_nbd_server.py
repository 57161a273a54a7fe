"""NbdServer over loopback and unix sockets, driven by a tiny client built on the pure codec."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import struct
from collections.abc import AsyncIterator

import pytest

from metalhorn.common import errors
from metalhorn.common.addresses import Address
from metalhorn.storage.frontend.nbd import NbdServer
from metalhorn.storage.nbd import constants as C
from metalhorn.storage.nbd import messages
from metalhorn.testing.blockdevs import FaultyBlockDevice, MemoryBlockDevice

SIZE = 1024 * 1024
TIMEOUT = 5.0


class Client:
    """Minimal NBD client: GO handshake, then raw requests and simple replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.size = 0
        self.flags = 0
        self.pending: dict[int, int] = {}  # cookie -> bytes of data its reply carries on success

    @classmethod
    async def connect(cls, address: Address, name: str = "vol") -> Client:
        if address.is_unix:
            reader, writer = await asyncio.open_unix_connection(address.path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        client = cls(reader, writer)
        try:
            await asyncio.wait_for(client._handshake(name), TIMEOUT)
        except BaseException:
            await client.close()
            raise
        return client

    async def _handshake(self, name: str) -> None:
        magic, opt_magic, _flags = struct.unpack(">QQH", await self.reader.readexactly(18))
        assert (magic, opt_magic) == (C.INIT_PASSWD, C.IHAVEOPT)
        raw = name.encode()
        data = struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0)
        self.writer.write(struct.pack(">IQII", 3, C.IHAVEOPT, C.Option.GO, len(data)) + data)
        while True:
            _, _, reply, length = struct.unpack(">QIII", await self.reader.readexactly(20))
            payload = await self.reader.readexactly(length)
            if reply == C.Reply.ACK:
                return
            assert reply == C.Reply.INFO, hex(reply)
            if struct.unpack_from(">H", payload)[0] == C.Info.EXPORT:
                _, self.size, self.flags = struct.unpack(">HQH", payload)

    def send(self, cmd: int, *, cookie: int, **fields: object) -> None:
        self.pending[cookie] = int(fields.get("length", 0)) if cmd == C.Cmd.READ else 0  # type: ignore[call-overload]
        self.writer.write(messages.request(cmd, cookie=cookie, **fields))  # type: ignore[arg-type]

    async def reply(self) -> tuple[int, int, bytes]:
        """(cookie, error, data) of the next simple reply."""
        magic, error, cookie = struct.unpack(">IIQ", await asyncio.wait_for(self.reader.readexactly(16), TIMEOUT))
        assert magic == C.SIMPLE_REPLY_MAGIC
        length = self.pending.pop(cookie)
        data = await self.reader.readexactly(length) if length and not error else b""
        return cookie, error, data

    async def call(self, cmd: int, **fields: object) -> tuple[int, bytes]:
        self.send(cmd, cookie=77, **fields)
        cookie, error, data = await self.reply()
        assert cookie == 77
        return error, data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def start(device: object, **options: object) -> NbdServer:
    server = NbdServer(device, export_name="vol", **options)  # type: ignore[arg-type]
    await server.start(Address(host="127.0.0.1", port=0))
    return server


@pytest.fixture
async def memory_server() -> AsyncIterator[tuple[NbdServer, MemoryBlockDevice]]:
    device = MemoryBlockDevice(SIZE)
    server = await start(device)
    try:
        yield server, device
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_write_read_flush_trim_zeroes(memory_server: tuple[NbdServer, MemoryBlockDevice]) -> None:
    server, device = memory_server
    (address,) = server.addresses
    assert address.port != 0
    client = await Client.connect(address)
    assert client.size == SIZE
    assert client.flags & C.TransmissionFlags.CAN_MULTI_CONN
    assert await client.call(C.Cmd.WRITE, offset=4095, data=b"\xab" * 3, flags=C.CmdFlags.FUA) == (0, b"")
    assert await client.call(C.Cmd.READ, offset=4094, length=5) == (0, b"\0\xab\xab\xab\0")
    assert device.fua_writes == 1
    assert await client.call(C.Cmd.FLUSH) == (0, b"")
    assert device.flushes == 1
    assert await client.call(C.Cmd.TRIM, offset=4095, length=1, flags=C.CmdFlags.FUA) == (0, b"")
    assert device.flushes == 2  # FUA on TRIM is honoured with a flush
    assert await client.call(C.Cmd.WRITE_ZEROES, offset=4096, length=1, flags=C.CmdFlags.NO_HOLE) == (0, b"")
    assert device.snapshot()[4094:4099] == b"\0\0\0\xab\0"
    # Refused by the protocol layer, the device is not called.
    assert await client.call(C.Cmd.READ, offset=SIZE, length=1) == (C.Errno.EINVAL, b"")
    assert await client.call(C.Cmd.WRITE, offset=SIZE - 1, data=b"xx") == (C.Errno.ENOSPC, b"")
    client.send(C.Cmd.DISC, cookie=0)
    assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""  # server closed after DISC
    await client.close()


class GatedDevice(MemoryBlockDevice):
    """Records the order of issue; reads wait for a gate so that replies can come out of order."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.issued: list[tuple[str, int]] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.running = 0
        self.peak = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.issued.append(("read", offset))
        gate = self.gates.get(offset)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if gate is not None:
                await gate.wait()
            else:
                await asyncio.sleep(0)
        finally:
            self.running -= 1
        return await super().read(offset, length)

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        self.issued.append(("write", offset))  # before the first await: this is the order of issue
        await asyncio.sleep(0)
        await super().write(offset, data, fua=fua)


async def test_replies_in_completion_order_and_writes_issued_in_arrival_order() -> None:
    device = GatedDevice(SIZE)
    slow = asyncio.Event()
    device.gates[0] = slow
    server = await start(device)
    try:
        client = await Client.connect(server.addresses[0])
        client.send(C.Cmd.READ, cookie=1, offset=0, length=4)  # blocked until released
        for i in range(50):
            client.send(C.Cmd.WRITE, cookie=100 + i, offset=8192, data=struct.pack(">I", i))
        client.send(C.Cmd.READ, cookie=2, offset=4096, length=4)
        cookies = []
        for _ in range(51):
            cookie, error, _ = await client.reply()
            assert error == 0
            cookies.append(cookie)
        assert 1 not in cookies  # the blocked read has not been answered, the others overtook it
        assert [offset for op, offset in device.issued if op == "write"] == [8192] * 50
        assert device.snapshot()[8192:8196] == struct.pack(">I", 49)  # issue order = arrival order
        slow.set()
        assert await client.reply() == (1, 0, b"\0\0\0\0")
        await client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_in_flight_limit_pauses_parsing() -> None:
    device = GatedDevice(SIZE)
    gate = asyncio.Event()
    for i in range(40):
        device.gates[i * 4096] = gate
    server = await start(device, max_in_flight=4)
    try:
        client = await Client.connect(server.addresses[0])
        for i in range(40):
            client.send(C.Cmd.READ, cookie=i, offset=i * 4096, length=16)
        await client.writer.drain()
        for _ in range(20):
            await asyncio.sleep(0.01)
            if device.running == 4:
                break
        assert device.running == 4
        gate.set()
        got = sorted([(await client.reply())[0] for _ in range(40)])
        assert got == list(range(40))
        assert device.peak == 4
        await client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


@pytest.mark.parametrize(
    ("operation", "cmd", "fields", "error", "errno"),
    [
        ("write", C.Cmd.WRITE, {"offset": 0, "data": b"x"}, errors.NoSpace("full"), C.Errno.ENOSPC),
        ("read", C.Cmd.READ, {"offset": 0, "length": 8}, errors.StorageIOError("bad sector"), C.Errno.EIO),
        ("read", C.Cmd.READ, {"offset": 0, "length": 8}, errors.OutOfRange("shrunk"), C.Errno.EINVAL),
        ("trim", C.Cmd.TRIM, {"offset": 0, "length": 8}, errors.NotSupported("no"), C.Errno.ENOTSUP),
        ("flush", C.Cmd.FLUSH, {}, errors.Unavailable("no replica"), C.Errno.EIO),
        ("write_zeroes", C.Cmd.WRITE_ZEROES, {"offset": 0, "length": 8}, errors.Internal("bug"), C.Errno.EIO),
    ],
    ids=["nospace", "eio", "outofrange", "notsup", "unavailable", "internal"],
)
async def test_device_errors_become_nbd_errors(
    operation: str, cmd: int, fields: dict[str, object], error: errors.MetalhornError, errno: int
) -> None:
    device = FaultyBlockDevice(MemoryBlockDevice(SIZE))
    device.inject(operation, error, count=1)
    server = await start(device)
    try:
        client = await Client.connect(server.addresses[0])
        assert await client.call(cmd, **fields) == (errno, b"")
        # The fault was one-shot; the connection is healthy and the next call succeeds.
        assert (await client.call(cmd, **fields))[0] == 0
        await client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


class CrashingDevice(MemoryBlockDevice):
    async def read(self, offset: int, length: int) -> bytes:
        raise RuntimeError("not a metalhorn error")


async def test_unexpected_exception_is_eio(caplog: pytest.LogCaptureFixture) -> None:
    server = await start(CrashingDevice(SIZE))
    try:
        client = await Client.connect(server.addresses[0])
        assert await client.call(C.Cmd.READ, offset=0, length=1) == (C.Errno.EIO, b"")
        assert "nbd request crashed" in caplog.text
        await client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_garbage_closes_only_that_connection(memory_server: tuple[NbdServer, MemoryBlockDevice]) -> None:
    server, _ = memory_server
    good = await Client.connect(server.addresses[0])
    bad = await Client.connect(server.addresses[0])
    bad.writer.write(b"\xff" * 64)
    assert await asyncio.wait_for(bad.reader.read(), TIMEOUT) == b""
    assert await good.call(C.Cmd.WRITE, offset=0, data=b"still fine") == (0, b"")
    assert await good.call(C.Cmd.READ, offset=0, length=10) == (0, b"still fine")
    await good.close()
    await bad.close()


async def test_handshake_garbage_and_abort(memory_server: tuple[NbdServer, MemoryBlockDevice]) -> None:
    server, _ = memory_server
    reader, writer = await asyncio.open_connection("127.0.0.1", server.addresses[0].port)
    await reader.readexactly(18)
    writer.write(struct.pack(">IQII", 3, C.IHAVEOPT, C.Option.ABORT, 0))
    _, option, reply, _ = struct.unpack(">QIII", await asyncio.wait_for(reader.readexactly(20), TIMEOUT))
    assert (option, reply) == (C.Option.ABORT, C.Reply.ACK)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    await writer.wait_closed()


async def test_disc_waits_for_in_flight_requests() -> None:
    device = GatedDevice(SIZE)
    gate = asyncio.Event()
    device.gates[0] = gate
    server = await start(device)
    try:
        client = await Client.connect(server.addresses[0])
        client.send(C.Cmd.READ, cookie=5, offset=0, length=3)
        client.send(C.Cmd.DISC, cookie=6)
        await client.writer.drain()
        await asyncio.sleep(0.01)
        gate.set()
        assert await client.reply() == (5, 0, b"\0\0\0")
        assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
        await client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_close_finishes_in_flight_then_disconnects() -> None:
    device = GatedDevice(SIZE)
    gate = asyncio.Event()
    device.gates[0] = gate
    server = await start(device)
    client = await Client.connect(server.addresses[0])
    client.send(C.Cmd.READ, cookie=5, offset=0, length=3)
    await client.writer.drain()
    for _ in range(50):
        if device.running:
            break
        await asyncio.sleep(0.01)
    server.close()
    waiter = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    gate.set()
    assert await client.reply() == (5, 0, b"\0\0\0")
    assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b""
    await asyncio.wait_for(waiter, TIMEOUT)
    assert server.client_count == 0
    await client.close()


async def test_unix_socket_and_many_clients(tmp_path: pathlib.Path) -> None:
    device = MemoryBlockDevice(SIZE)
    server = NbdServer(device, export_name="vol")
    path = str(tmp_path / "nbd.sock")
    await server.start(Address(path=path))
    try:
        assert server.addresses == [Address(path=path)]
        clients = [await Client.connect(Address(path=path), name=n) for n in ("vol", "", "vol")]
        for i, client in enumerate(clients):
            client.send(C.Cmd.WRITE, cookie=i, offset=i * 4096, data=bytes([i + 1]) * 4096)
        for i, client in enumerate(clients):
            assert await client.reply() == (i, 0, b"")
        for i, client in enumerate(clients):
            other = (i + 1) % len(clients)
            got = await client.call(C.Cmd.READ, offset=other * 4096, length=4096)
            assert got == (0, bytes([other + 1]) * 4096)
        for client in clients:
            await client.close()
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert not _exists(path)  # the socket file is removed on close


def _exists(path: str) -> bool:
    return pathlib.Path(path).exists()


async def test_unknown_export_in_go_is_refused(memory_server: tuple[NbdServer, MemoryBlockDevice]) -> None:
    server, _ = memory_server
    with pytest.raises(AssertionError, match=hex(C.Reply.ERR_UNKNOWN)):
        await Client.connect(server.addresses[0], name="other")


async def test_start_errors() -> None:
    with pytest.raises(errors.InvalidArgument):
        NbdServer(MemoryBlockDevice(1), export_name="x", max_in_flight=0)
    server = NbdServer(MemoryBlockDevice(1), export_name="x")
    with pytest.raises(errors.InvalidArgument, match="cannot listen"):
        await server.start(Address(path="/nonexistent-dir/for/sure/nbd.sock"))
