"""Rebuild with real processes: 3 `metalhorn replica serve` + `metalhorn engine serve`, fio and qemu-io over NBD."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import harness

SIZE = 256 << 20


def run(args: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def qemu_io(uri: str, *commands: str) -> None:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = run([*args, uri])
    assert "fail" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr


def rebuilds(volume: harness.LocalVolume) -> dict[str, dict[str, Any]]:
    info = volume.info()
    return {str(p["address"]): p for p in info.get("rebuilds", [])}  # type: ignore[union-attr]


def replica_address(volume: harness.LocalVolume, index: int) -> str:
    return f"tcp://127.0.0.1:{volume.replica_ports[index]}"


def wait_rw(volume: harness.LocalVolume, *, timeout: float = 120) -> None:
    harness.wait_until(lambda: volume.replica_modes() == ["RW"] * 3, timeout=timeout, what="all replicas RW")


def checksums(volume: harness.LocalVolume) -> list[str]:
    return [str(volume.inspect(i)["checksum"]) for i in range(volume.replica_count)]


@pytest.fixture
def volume(tmp_path: pathlib.Path) -> Iterator[harness.LocalVolume]:
    with harness.local_volume(tmp_path / "vol", size=SIZE) as vol:
        yield vol


def test_replica_killed_under_fio_is_rebuilt_while_fio_runs(volume: harness.LocalVolume) -> None:
    fio = subprocess.Popen(
        ["fio", "--name=rebuild", "--ioengine=nbd", f"--uri={volume.uri}", "--rw=randwrite", "--bs=4k",
         "--iodepth=16", "--size=96M", "--rate_iops=800", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
         "--randrepeat=0", "--output-format=json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(2)
        assert fio.poll() is None, "fio ended before the fault"
        volume.replicas[1].kill()
        harness.wait_until(lambda: volume.replica_modes()[1] == "ERR", timeout=20, what="replica 1 ERR")
        volume.start_replica(1)
        wait_rw(volume)  # auto-rebuild (default on) brought it back
        assert fio.poll() is None, "the rebuild should finish while fio still runs"
        stdout, stderr = fio.communicate(timeout=180)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.communicate(timeout=10)
    assert fio.returncode == 0, stderr
    job = json.loads(stdout[stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0
    progress = rebuilds(volume)[replica_address(volume, 1)]
    assert progress["state"] == "done" and progress["transferred"] > 0
    assert volume.replica_modes() == ["RW", "RW", "RW"]
    sums = checksums(volume)
    assert len(set(sums)) == 1, sums


def test_stale_replica_rebuild_transfers_little(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, f"write -P 0x5a 0 {SIZE}")
    volume.replicas[2].kill()
    harness.wait_until(lambda: volume.replica_modes()[2] == "ERR", timeout=20, what="replica 2 ERR")
    changed = SIZE // 100  # 1 % of the volume, in two places
    qemu_io(volume.uri, f"write -P 0x77 {8 << 20} {changed // 2}", f"write -P 0x78 {200 << 20} {changed // 2}")
    volume.start_replica(2)
    wait_rw(volume)
    progress = rebuilds(volume)[replica_address(volume, 2)]
    assert progress["state"] == "done"
    assert progress["transferred"] <= SIZE * 2 // 100, progress
    assert progress["skipped"] >= SIZE * 90 // 100, progress
    qemu_io(volume.uri, f"read -P 0x77 {8 << 20} {changed // 2}", f"read -P 0x5a {16 << 20} 1M")
    sums = checksums(volume)
    assert len(set(sums)) == 1, sums


def test_start_with_an_older_replica_rebuilds_it(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x33 0 4M")
    volume.replicas[0].kill()
    harness.wait_until(lambda: volume.replica_modes()[0] == "ERR", timeout=20, what="replica 0 ERR")
    qemu_io(volume.uri, "write -P 0x44 1M 1M")  # replica 0 misses this: an older revision
    volume.stop()
    for index in range(3):
        volume.start_replica(index)
    volume.start_engine()
    wait_rw(volume)
    progress = rebuilds(volume)[replica_address(volume, 0)]
    assert progress["state"] == "done"
    for _ in range(3):  # reads rotate over every replica now
        qemu_io(volume.uri, "read -P 0x33 0 1M", "read -P 0x44 1M 1M", "read -P 0x33 2M 2M")
    sums = checksums(volume)
    assert len(set(sums)) == 1, sums


def test_add_and_remove_replica_by_hand(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x21 0 8M")
    address = replica_address(volume, 2)
    out = run([*harness.METALHORN, "engine", "rm-replica", "--control", volume.control, address])
    assert "removed" in out.stdout
    assert len(volume.replica_modes()) == 2
    qemu_io(volume.uri, "write -P 0x22 4M 1M")
    out = run(
        [*harness.METALHORN, "engine", "add-replica", "--control", volume.control, address, "--wait", "-o", "json"]
    )
    progress = json.loads(out.stdout)
    assert progress["state"] == "done" and progress["address"] == address
    assert volume.replica_modes() == ["RW", "RW", "RW"]
    table = run([*harness.METALHORN, "engine", "info", "--control", volume.control]).stdout
    assert f"rebuild {address}  done" in table
    sums = checksums(volume)
    assert len(set(sums)) == 1, sums
