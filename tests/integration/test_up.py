"""The README's main command, tried as a new user would: start, attach, write, Ctrl-C, start again, read."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess

from tests.integration import harness


def start_up(data_dir: pathlib.Path, port: int, log: pathlib.Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*harness.METALHORN, "up", "--data-dir", str(data_dir), "--size", "64M", "--listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    harness.wait_until(
        lambda: "metalhorn is up" in log.read_text() or proc.poll() is not None, timeout=60, what="metalhorn up"
    )
    assert proc.poll() is None, log.read_text()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> int:
    os.kill(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_up_serves_a_volume_and_resumes_with_data(tmp_path: pathlib.Path) -> None:
    port = harness.free_port()
    uri = f"nbd://127.0.0.1:{port}/vol1"
    log = tmp_path / "up.log"
    proc = start_up(tmp_path / "data", port, log)
    try:
        assert uri in log.read_text()
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 128k", uri], check=True, timeout=60)
        info = subprocess.run(
            [
                *harness.METALHORN,
                "engine",
                "info",
                "--control",
                f"unix:{tmp_path / 'data' / 'run' / 'engine.sock'}",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert info.stdout.count('"RW"') == 3
    finally:
        assert stop(proc) == 0, log.read_text()
    log = tmp_path / "up-again.log"
    proc = start_up(tmp_path / "data", port, log)
    try:
        out = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 128k", "-c", "read -P 0 0 1M", uri],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert "Pattern verification failed" not in out.stdout + out.stderr
    finally:
        assert stop(proc) == 0, log.read_text()
