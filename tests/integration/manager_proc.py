"""A real `metalhorn manager` process for integration tests: started on a free port with its own SQLite file,
stopped (SIGTERM, then SIGKILL) in a finally, also when the test fails."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

START_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class RunningManager:
    url: str
    token: str
    state_dir: pathlib.Path
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def running_manager(state_dir: pathlib.Path) -> Iterator[RunningManager]:
    state_dir.mkdir(parents=True, exist_ok=True)
    url_file = state_dir / "url"
    url_file.unlink(missing_ok=True)
    log = (state_dir / "manager.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metalhorn",
            "manager",
            "--store",
            f"sqlite://{state_dir}/metalhorn.db",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        url = ""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"manager exited with {process.returncode}: {_tail(state_dir)}")
            if url_file.exists():
                url = url_file.read_text().strip()
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                        break
            time.sleep(0.05)
        else:
            raise AssertionError(f"manager did not answer within {START_TIMEOUT}s: {_tail(state_dir)}")
        token = (state_dir / "token").read_text().strip()
        yield RunningManager(url=url, token=token, state_dir=state_dir, process=process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()


def _tail(state_dir: pathlib.Path) -> str:
    with contextlib.suppress(OSError):
        return (state_dir / "manager.log").read_text()[-2000:]
    return ""
