"""`metalhorn replica serve` as a real process: talk to it, stop it with SIGTERM, then `replica inspect` it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from metalhorn.common import errors
from metalhorn.storage.wire.client import ReplicaClient

METALHORN = str(pathlib.Path(sys.executable).with_name("metalhorn"))
SIZE = 16 << 20
BS = 4096


class Served:
    """One `replica serve` process, started and ended by PID."""

    def __init__(self, directory: pathlib.Path, listen: str, *extra: str, log: pathlib.Path) -> None:
        self.log = log
        with log.open("ab") as err:
            self.popen = subprocess.Popen(
                [METALHORN, "replica", "serve", str(directory), "--listen", listen, *extra],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.address = ""

    def wait_listening(self, timeout: float = 20) -> str:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n") and time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    chunk = os.read(self.popen.stdout.fileno(), 1024)
                    if not chunk:
                        break
                    line += chunk
        text = line.decode().strip()
        assert text.startswith("listening on "), f"no 'listening on' line; got {text!r}; log:\n{self.log_text()}"
        self.address = text.removeprefix("listening on ")
        return self.address

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def terminate(self, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@pytest.fixture
def spawn() -> Iterator[list[Served]]:
    started: list[Served] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALHORN, *args], capture_output=True, text=True, timeout=timeout, check=False)


def inspect(directory: pathlib.Path) -> dict[str, object]:
    out = run_cli("replica", "inspect", str(directory), "-o", "json", "--checksum")
    assert out.returncode == 0, out.stderr
    report: dict[str, object] = json.loads(out.stdout)
    return report


async def drive(address: str) -> bytearray:
    """Write, snapshot, overwrite, zero, trim; return the expected volume content."""
    model = bytearray(SIZE)
    client = await ReplicaClient.connect(address, timeout=10)
    try:
        writes = [(i * 64 * 1024, bytes([i + 1]) * (64 * 1024)) for i in range(16)]
        await asyncio.gather(*(client.write(off, data) for off, data in writes))
        for off, data in writes:
            model[off : off + len(data)] = data
        await client.control({"op": "snapshot", "name": "s1"})
        await client.write(100, b"unaligned over a snapshot")
        model[100:125] = b"unaligned over a snapshot"
        await client.write_zeroes(BS, 2 * BS)
        model[BS : 3 * BS] = bytes(2 * BS)
        await client.unmap(8 * BS, 4 * BS)  # the snapshot holds these blocks: data must stay
        await client.flush()
        assert await client.read(0, 64 * 1024) == model[: 64 * 1024]
        with pytest.raises(errors.OutOfRange):
            await client.read(SIZE, 1)
    finally:
        client.close()
        await client.wait_closed()
    return model


def test_serve_talk_sigterm_inspect(tmp_path: pathlib.Path, spawn: list[Served]) -> None:
    directory = tmp_path / "new" / "replica"  # parents are created too
    proc = Served(directory, "127.0.0.1:0", "--size", "16M", log=tmp_path / "serve.log")
    spawn.append(proc)
    address = proc.wait_listening()
    model = asyncio.run(drive(address))
    meta = json.loads((directory / "volume.meta").read_bytes())
    assert meta["Dirty"] is True
    assert proc.terminate() == 0, proc.log_text()
    assert "replica client connected" in proc.log_text()

    report = inspect(directory)
    assert report["volume_meta"] == {
        "Size": SIZE,
        "Head": "volume-head-001.img",
        "Dirty": False,
        "Rebuilding": False,
        "Error": "",
        "Parent": "volume-snap-s1.img",
        "SectorSize": 512,
        "BackingFilePath": "",
    }
    assert report["chain"] == ["volume-snap-s1.img", "volume-head-001.img"]
    assert report["revision"] == 16 + 3
    assert report["checksum"] == hashlib.sha256(model).hexdigest()
    layers = report["layers"]
    assert isinstance(layers, list) and layers[0]["allocated"] >= 1 << 20

    text = run_cli("replica", "inspect", str(directory))
    assert text.returncode == 0
    assert "volume-snap-s1.img" in text.stdout and "revision   19" in text.stdout

    # Serve again without --size: same data.
    again = Served(directory, "127.0.0.1:0", log=tmp_path / "serve.log")
    spawn.append(again)
    again.wait_listening()
    assert again.terminate() == 0
    assert inspect(directory)["checksum"] == report["checksum"]


def test_garbage_does_not_stop_the_server(tmp_path: pathlib.Path, spawn: list[Served]) -> None:
    proc = Served(tmp_path / "r", "127.0.0.1:0", "--size", "16M", log=tmp_path / "serve.log")
    spawn.append(proc)
    address = proc.wait_listening()
    host, _, port = address.rpartition(":")
    for payload in (
        os.urandom(4096),
        b"MH" + bytes(30) + os.urandom(100),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    assert proc.popen.poll() is None, proc.log_text()

    async def still_served() -> bytes:
        client = await ReplicaClient.connect(address, timeout=10)
        try:
            await client.write(0, b"ok")
            return await client.read(0, 2)
        finally:
            client.close()
            await client.wait_closed()

    assert asyncio.run(still_served()) == b"ok"
    assert "broke the protocol" in proc.log_text()
    assert proc.terminate() == 0


def test_unix_socket_listen(tmp_path: pathlib.Path, spawn: list[Served]) -> None:
    sock = tmp_path / "replica.sock"
    proc = Served(tmp_path / "r", f"unix:{sock}", "--size", "1M", log=tmp_path / "serve.log")
    spawn.append(proc)
    assert proc.wait_listening() == f"unix:{sock}"

    async def ping() -> None:
        client = await ReplicaClient.connect(f"unix:{sock}", timeout=10)
        try:
            await client.ping()
        finally:
            client.close()
            await client.wait_closed()

    asyncio.run(ping())
    assert proc.terminate() == 0
    assert not sock.exists()


def test_corrupt_metadata_refused_with_message(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "r"
    created = run_cli("replica", "inspect", str(directory))
    assert created.returncode != 0 and "no replica" in created.stderr
    proc = subprocess.Popen(
        [METALHORN, "replica", "serve", str(directory), "--size", "1M", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"listening on")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    (directory / "volume-head-000.img.meta").write_text("{broken")
    before = sorted(os.listdir(directory))
    out = run_cli("replica", "serve", str(directory), "--listen", "127.0.0.1:0", timeout=30)
    assert out.returncode != 0
    assert "volume-head-000.img.meta" in out.stderr and "not valid JSON" in out.stderr
    assert sorted(os.listdir(directory)) == before

    mismatch = run_cli("replica", "serve", str(tmp_path / "r"), "--size", "2M", "--listen", "127.0.0.1:0")
    assert mismatch.returncode != 0 and "error" in mismatch.stderr
