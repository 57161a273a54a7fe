"""Acceptance of the storage data path with third-party clients: engine + 3 replica processes over NBD."""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import acked, harness

WRITER = pathlib.Path(__file__).parent / "peers" / "acked_writer.py"
SIZE = 256 << 20


def run(args: list[str], *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def qemu_io(uri: str, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    return run([*args, uri], check=check)


def fio_verify(uri: str, *, size: str, name: str = "verify", iodepth: int = 16) -> list[str]:
    return [
        "fio",
        f"--name={name}",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--rw=randwrite",
        "--bs=4k",
        f"--iodepth={iodepth}",
        f"--size={size}",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--randrepeat=0",
        "--output-format=json",
    ]


def fio_job(stdout: str) -> dict[str, Any]:
    """fio's first job from its JSON output (the nbd engine prints a line before the JSON)."""
    job: dict[str, Any] = json.loads(stdout[stdout.index("{") :])["jobs"][0]
    return job


def assert_replicas_agree(volume: harness.LocalVolume) -> None:
    sums = []
    for index in range(volume.replica_count):
        report = volume.inspect(index)
        sums.append(report["checksum"])
    assert len(set(sums)) == 1, f"replica contents differ: {sums}"


@pytest.fixture
def volume(tmp_path: pathlib.Path) -> Iterator[harness.LocalVolume]:
    with harness.local_volume(tmp_path / "vol", size=SIZE) as vol:
        yield vol


def test_nbdinfo_shows_size_and_flags(volume: harness.LocalVolume) -> None:
    out = run(["nbdinfo", "--json", volume.uri])
    info = json.loads(out.stdout)
    export = info["exports"][0]
    assert export["export-size"] == SIZE
    assert export["can_flush"] and export["can_fua"] and export["can_trim"] and export["can_zero"]
    assert export["can_multi_conn"]
    assert not export["is_read_only"]
    listing = run(["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{volume.nbd_port}"])
    assert [e["export-name"] for e in json.loads(listing.stdout)["exports"]] == [volume.name]


def test_qemu_io_patterns_at_edges_and_unaligned(volume: harness.LocalVolume) -> None:
    last = SIZE - 4096
    qemu_io(
        volume.uri,
        "write -P 0x11 0 4k",
        "write -P 0x22 1000 3000",
        "write -P 0x33 12345 70001",
        f"write -P 0x44 {last} 4k",
        f"write -P 0x55 {SIZE - 1} 1",
    )
    out = qemu_io(
        volume.uri,
        "read -P 0x11 0 1000",
        "read -P 0x22 1000 3000",
        "read -P 0x11 4000 96",
        "read -P 0x33 12345 70001",
        f"read -P 0x44 {last} 4095",
        f"read -P 0x55 {SIZE - 1} 1",
        "read -P 0 8192 4153",
    )
    assert "Pattern verification failed" not in out.stdout + out.stderr
    past = qemu_io(volume.uri, f"read {SIZE - 512} 4096", check=False)
    assert "read failed" in past.stdout + past.stderr or past.returncode != 0
    # The engine is still up and serving after the failed request.
    assert volume.engine is not None and volume.engine.alive
    qemu_io(volume.uri, "read -P 0x11 0 1000", "read -P 0x22 1000 3000")
    assert volume.replica_modes() == ["RW", "RW", "RW"]
    assert_replicas_agree(volume)


def test_nbdcopy_256mib_in_and_out_is_identical(volume: harness.LocalVolume, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "random.img"
    rng = random.Random(7)
    with source.open("wb") as out:
        for _ in range(SIZE // (1 << 20)):
            out.write(rng.randbytes(1 << 20))
    run(["nbdcopy", str(source), volume.uri], timeout=300)
    back = tmp_path / "back.img"
    run(["nbdcopy", volume.uri, str(back)], timeout=300)
    assert hashlib.sha256(back.read_bytes()).hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()
    volume.stop()
    sums = {volume.inspect(i)["checksum"] for i in range(3)}
    assert sums == {hashlib.sha256(source.read_bytes()).hexdigest()}


def test_fio_verify_random_writes(volume: harness.LocalVolume) -> None:
    out = run(fio_verify(volume.uri, size="64m"), timeout=300)
    job = fio_job(out.stdout)
    assert job["error"] == 0
    assert job["write"]["io_bytes"] >= 64 << 20
    assert job["read"]["io_bytes"] >= 64 << 20  # the verify pass read everything back
    assert_replicas_agree(volume)


def test_sigkill_two_replicas_during_fio_verify(volume: harness.LocalVolume, tmp_path: pathlib.Path) -> None:
    fio = subprocess.Popen(
        fio_verify(volume.uri, size="96m"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1.5)
        assert fio.poll() is None, "fio finished before the fault was injected; use a larger size"
        volume.replicas[0].kill()
        time.sleep(0.3)
        volume.replicas[1].kill()
        stdout, stderr = fio.communicate(timeout=300)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0, stderr
    job = fio_job(stdout)
    assert job["error"] == 0
    assert job["read"]["io_bytes"] >= 96 << 20
    assert volume.replica_modes() == ["ERR", "ERR", "RW"]
    qemu_io(volume.uri, "write -P 0x66 0 64k", "read -P 0x66 0 64k")


def test_all_replicas_killed_errors_then_acknowledged_writes_survive(
    volume: harness.LocalVolume, tmp_path: pathlib.Path
) -> None:
    record = tmp_path / "record.txt"
    blocks = SIZE // 4096
    writer_log = (tmp_path / "writer.log").open("wb")
    writer = subprocess.Popen(
        [
            "/usr/bin/python3",
            str(WRITER),
            volume.uri,
            str(record),
            "--blocks",
            str(blocks),
            "--seconds",
            "120",
            "--flush-every",
            "50",
        ],
        stdout=writer_log,
        stderr=subprocess.STDOUT,
    )
    try:
        harness.wait_until(
            lambda: record.exists() and record.stat().st_size > 20000, timeout=30, what="the writer to get going"
        )
        for proc in volume.replicas:
            proc.kill()
        killed_at = time.monotonic()
        writer.wait(timeout=30)  # the client gets an I/O error, not a hang
        waited = time.monotonic() - killed_at
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer_log.close()
    result = acked.read_record(record)
    assert writer.returncode == 3, f"writer did not see an I/O error (rc={writer.returncode}, waited {waited:.1f}s)"
    assert result.errors, "the record has no error line"
    assert result.ack_count > 100
    # Restart everything from the same directories; every acknowledged write reads back.
    assert volume.engine is not None
    volume.engine.kill()
    for index in range(volume.replica_count):
        volume.start_replica(index)
    volume.start_engine()
    image = tmp_path / "after.img"
    run(["nbdcopy", volume.uri, str(image)], timeout=300)
    assert acked.lost_writes(result, image) == []


def test_garbage_on_both_ports_crashes_neither_server(volume: harness.LocalVolume) -> None:
    rng = random.Random(11)
    ports = [volume.nbd_port, volume.replica_ports[0]]
    for port in ports:
        for round_ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                payload = rng.randbytes(rng.randrange(1, 4096))
                if round_ % 4 == 0:  # a valid NBD greeting reply followed by garbage options
                    payload = b"\x00\x00\x00\x03" + b"IHAVEOPT" + payload
                try:
                    sock.sendall(payload)
                    sock.settimeout(0.5)
                    sock.recv(65536)
                except (TimeoutError, ConnectionError):
                    pass
    assert all(proc.alive for proc in volume.replicas)
    assert volume.engine is not None and volume.engine.alive
    qemu_io(volume.uri, "write -P 0x77 4096 4k", "read -P 0x77 4096 4k")
    assert volume.replica_modes() == ["RW", "RW", "RW"]
