"""`metalhorn engine serve` / `engine info` with three real `metalhorn replica serve` processes and qemu-io."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration import harness

SIZE = 64 << 20


def qemu_io(uri: str, *commands: str) -> str:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = subprocess.run([*args, uri], capture_output=True, text=True, timeout=60, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "fail" not in text.lower(), text
    return text


def engine_info(volume: harness.LocalVolume, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*harness.METALHORN, "engine", "info", "--control", volume.control, *extra],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )


def wait_for_modes(volume: harness.LocalVolume, expected: list[str]) -> None:
    harness.wait_until(lambda: volume.replica_modes() == expected, timeout=15, what=f"replica modes {expected}")


@pytest.fixture
def volume(tmp_path: pathlib.Path) -> Iterator[harness.LocalVolume]:
    with harness.local_volume(tmp_path / "vol", size=SIZE) as vol:
        yield vol


def test_patterns_and_info(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0xa1 0 64k", "write -P 0xb2 65536 4k", f"write -P 0xc3 {SIZE - 4096} 4k")
    qemu_io(volume.uri, "read -P 0xa1 0 64k", "read -P 0xb2 65536 4k", f"read -P 0xc3 {SIZE - 4096} 4k")
    qemu_io(volume.uri, "write -z 0 8k", "read -P 0 0 8k", "read -P 0xa1 8192 56k")
    table = engine_info(volume).stdout
    assert table.splitlines()[0].startswith("volume vol")
    assert table.count(" RW") == 3
    info = json.loads(engine_info(volume, "-o", "json").stdout)
    assert info["volume"] == "vol" and info["size"] == SIZE
    assert [r["mode"] for r in info["replicas"]] == ["RW", "RW", "RW"]
    assert info["counters"]["writes"] >= 3 and info["counters"]["reads"] >= 3


def test_sigkill_one_replica_goes_err_and_io_continues(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x11 0 128k")
    volume.replicas[1].kill()
    wait_for_modes(volume, ["RW", "ERR", "RW"])  # noticed at once, even with no I/O running
    qemu_io(volume.uri, "write -P 0x22 131072 128k", "read -P 0x11 0 128k", "read -P 0x22 131072 128k")
    info = json.loads(engine_info(volume, "-o", "json").stdout)
    assert info["replicas"][1]["reason"]
    assert "ERR" in engine_info(volume).stdout


def test_restart_with_a_stale_replica_keeps_it_out(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x33 0 64k")
    volume.replicas[2].kill()
    wait_for_modes(volume, ["RW", "RW", "ERR"])
    qemu_io(volume.uri, "write -P 0x44 0 64k")  # replica 2 misses this write
    volume.stop()
    for index in range(3):
        volume.start_replica(index)
    volume.start_engine(("--no-auto-rebuild",))  # keep it out: this test is about the start-up choice
    info = json.loads(engine_info(volume, "-o", "json").stdout)
    assert [r["mode"] for r in info["replicas"]] == ["RW", "RW", "ERR"]
    assert info["replicas"][2]["reason"].startswith("stale: revision")
    for _ in range(3):  # reads rotate over the RW replicas only: never the old data
        qemu_io(volume.uri, "read -P 0x44 0 64k")


def test_sigterm_stops_cleanly(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x55 0 4k")
    assert volume.engine is not None
    assert volume.engine.stop() == 0
    log = volume.engine.log.read_text()
    assert "serving vol on 127.0.0.1:" in log
    assert "stopped" in log
    assert all(proc.alive for proc in volume.replicas)


def test_refuses_to_start_without_replicas_or_with_the_wrong_size(tmp_path: pathlib.Path) -> None:
    dead = harness.free_port()
    out = subprocess.run(
        [*harness.METALHORN, "engine", "serve", "v", "--size", "64M", "--replica", f"tcp://127.0.0.1:{dead}",
         "--listen", f"127.0.0.1:{harness.free_port()}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "no usable replica" in out.stderr
    with harness.local_volume(tmp_path / "vol", size=SIZE) as volume:
        assert volume.engine is not None
        volume.engine.stop()
        wrong = subprocess.run(
            [*harness.METALHORN, "engine", "serve", "v", "--size", "128M",
             "--replica", f"127.0.0.1:{volume.replica_ports[0]}", "--listen", f"127.0.0.1:{harness.free_port()}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert wrong.returncode == 1
        assert "does not match --size" in wrong.stderr


def test_engine_info_without_an_engine_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    out = subprocess.run(
        [*harness.METALHORN, "engine", "info", "--control", f"unix:{tmp_path / 'none.sock'}"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "cannot reach control endpoint" in out.stderr


def test_sigint_is_handled_like_sigterm(volume: harness.LocalVolume) -> None:
    assert volume.engine is not None and volume.engine.popen is not None
    volume.engine.signal(signal.SIGINT)
    assert volume.engine.popen.wait(timeout=20) == 0
