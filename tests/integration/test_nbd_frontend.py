"""NbdServer over MemoryBlockDevice, driven by real NBD clients: nbdinfo, nbdsh, qemu-io, nbdcopy, fio.

The server runs on its own event loop in a background thread of the test process; every tool call and every
wait is bounded, and the server is stopped in teardown even when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import socket
import struct
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from metalhorn.common.addresses import Address
from metalhorn.storage.frontend.nbd import NbdServer
from metalhorn.testing.blockdevs import MemoryBlockDevice

T = TypeVar("T")
SIZE = 64 * 1024 * 1024
TOOL_TIMEOUT = 120


class ServerThread:
    """An NbdServer on a private event loop (uvloop when installed, as in the daemons)."""

    def __init__(self, size: int, address: Address) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            self.loop = asyncio.new_event_loop()
        self.device = MemoryBlockDevice(size)
        self.server = NbdServer(self.device, export_name="vol", description="integration volume")
        self.address = address
        self.thread = threading.Thread(target=self.loop.run_forever, name="nbd-server", daemon=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def start(self) -> None:
        self.thread.start()
        self.run(self.server.start(self.address))

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 10)

        try:
            if self.thread.is_alive():
                self.run(close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()

    @property
    def uri(self) -> str:
        (address,) = self.server.addresses
        if address.is_unix:
            return f"nbd+unix:///vol?socket={address.path}"
        return f"nbd://127.0.0.1:{address.port}/vol"

    def read(self, offset: int, length: int) -> bytes:
        return self.run(self.device.read(offset, length))


@pytest.fixture
def server() -> Iterator[ServerThread]:
    srv = ServerThread(SIZE, Address(host="127.0.0.1", port=0))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def tool(*args: str, check: bool = True, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = None
    if args[0] == "nbdsh":  # "#!/usr/bin/env python3" must find the distribution's python with libnbd's module
        env = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}
    result = subprocess.run(
        list(args), stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=TOOL_TIMEOUT, check=False, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    return result


def qemu_io(uri: str, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["qemu-io", "-f", "raw", uri]
    for command in commands:
        args += ["-c", command]
    result = tool(*args, check=False)
    failed = result.returncode != 0 or "failed" in result.stdout + result.stderr
    if check and failed:
        raise AssertionError(f"qemu-io {commands}: {result.stdout}\n{result.stderr}")
    return result


def test_nbdinfo_reports_size_and_flags(server: ServerThread) -> None:
    info = json.loads(tool("nbdinfo", "--json", server.uri).stdout)
    assert info["protocol"] == "newstyle-fixed"
    (export,) = info["exports"]
    assert export["export-name"] == "vol"
    assert export["export-size"] == SIZE
    assert export["description"] == "integration volume"
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn"):
        assert export[flag] is True, flag
    for flag in ("is_read_only", "can_df", "can_fast_zero", "can_cache"):
        assert export[flag] is False, flag
    assert (export["block_size_minimum"], export["block_size_preferred"], export["block_size_maximum"]) == (
        1,
        4096,
        32 * 1024 * 1024,
    )


def test_nbdinfo_list_and_default_export(server: ServerThread) -> None:
    port = server.server.addresses[0].port
    listing = json.loads(tool("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{port}").stdout)
    assert [e["export-name"] for e in listing["exports"]] == ["vol"]
    assert tool("nbdinfo", "--size", f"nbd://127.0.0.1:{port}").stdout.strip() == str(SIZE)  # empty name
    wrong = tool("nbdinfo", f"nbd://127.0.0.1:{port}/nope", check=False)
    assert wrong.returncode != 0


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 4096), (1, 4096), (4095, 2), (12345, 100_000), (SIZE - 4096, 4096), (SIZE - 1, 1), (SIZE - 777, 777)],
    ids=["first-block", "off-by-one", "straddle", "unaligned-large", "last-block", "last-byte", "tail"],
)
def test_qemu_io_write_read(server: ServerThread, offset: int, length: int) -> None:
    qemu_io(server.uri, f"write -P 0xab {offset} {length}", f"read -P 0xab {offset} {length}")
    assert server.read(offset, length) == b"\xab" * length
    if offset:
        assert server.read(offset - 1, 1) == b"\0"  # the neighbour is untouched
    if offset + length < SIZE:
        assert server.read(offset + length, 1) == b"\0"


def test_qemu_io_zero_discard_flush(server: ServerThread) -> None:
    qemu_io(
        server.uri,
        "write -P 0xcd 0 64k",
        "write -z 4096 8192",  # NBD_CMD_WRITE_ZEROES
        "discard 32768 4096",  # NBD_CMD_TRIM
        "write -P 0xcd -f 65536 4096",  # FUA
        "flush",
        "read -P 0xcd 0 4096",
        "read -P 0 4096 8192",
        "read -P 0xcd 12288 20480",
    )
    assert server.device.fua_writes >= 1
    assert server.device.flushes >= 1


def test_out_of_range_fails_cleanly_and_server_stays_up(server: ServerThread) -> None:
    # qemu refuses this itself; the server must simply still be there afterwards.
    assert qemu_io(server.uri, f"read {SIZE - 1} 2", check=False).returncode != 0
    # libnbd without client-side checks lets the request reach the server: EINVAL for a read, ENOSPC for a write.
    script = f"""
import errno
h.set_strict_mode(0)
for call, want in ((lambda: h.pread(2, {SIZE - 1}), errno.EINVAL), (lambda: h.pwrite(b"xy", {SIZE - 1}), errno.ENOSPC)):
    try:
        call()
    except nbd.Error as exc:
        assert exc.errno in (want, errno.errorcode[want]), (exc.errno, want)  # a name in libnbd 1.14
    else:
        raise SystemExit("out-of-range request succeeded")
h.pwrite(b"ok", 0)
assert h.pread(2, 0) == b"ok"
print("done")
"""
    assert tool("nbdsh", "-u", server.uri, "-c", script).stdout.strip() == "done"
    qemu_io(server.uri, "read -P 0x6f 0 1")  # "o": a fresh connection still works


def test_nbdcopy_64m_random_in_and_out(server: ServerThread, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in.img"
    with source.open("wb") as out:
        subprocess.run(["head", "-c", str(SIZE), "/dev/urandom"], stdout=out, check=True, timeout=TOOL_TIMEOUT)
    tool("nbdcopy", str(source), server.uri)
    back = tmp_path / "out.img"
    with back.open("wb") as out:
        tool("nbdcopy", server.uri, "-", stdout=out)
    assert back.stat().st_size == SIZE
    assert _same_file(source, back)


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], timeout=TOOL_TIMEOUT, check=False).returncode == 0


def test_random_bytes_do_not_kill_the_server(server: ServerThread) -> None:
    port = server.server.addresses[0].port
    export_name = struct.pack(">IQII", 3, 0x49484156454F5054, 1, 3) + b"vol"
    payloads = [
        bytes(range(256)) * 8,  # unknown client flags
        b"\x00" * 4 + b"\xff" * 16,  # bad option magic
        b"NBDMAGIC" * 100,
        export_name + b"\xee" * 28,  # bad request magic in transmission
        export_name + struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 2**31),  # 2 GiB write
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(5)
            sock.recv(18)  # greeting
            sock.sendall(payload)
            try:
                while sock.recv(65536):  # the server answers or closes; it never hangs
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    qemu_io(server.uri, "write -P 0x11 0 4k", "read -P 0x11 0 4k")
    assert server.server.client_count == 0


def test_unix_socket(tmp_path: pathlib.Path) -> None:
    srv = ServerThread(SIZE, Address(path=str(tmp_path / "nbd.sock")))
    srv.start()
    try:
        assert srv.uri.startswith("nbd+unix:///vol?socket=")
        info = json.loads(tool("nbdinfo", "--json", srv.uri).stdout)
        assert info["exports"][0]["export-size"] == SIZE
        qemu_io(srv.uri, "write -P 0x42 8191 3", "read -P 0x42 8191 3")
        assert srv.read(8190, 5) == b"\0\x42\x42\x42\0"
    finally:
        srv.stop()


def test_fio_verify_under_concurrency(server: ServerThread, tmp_path: pathlib.Path) -> None:
    """Many requests in flight, replies out of order: fio's checksums must still match."""
    tool(
        "fio",
        "--name=verify",
        "--ioengine=nbd",
        f"--uri={server.uri}",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=16m",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        f"--directory={tmp_path}",
    )
