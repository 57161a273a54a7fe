"""Child-process supervision for `metalhorn up`: start, wait until ready, restart, stop in order.

Processes are tracked by PID and ended only by PID. Readiness is a listening socket (TCP or unix) that accepts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from metalhorn.common import addresses, errors
from metalhorn.common.logs import kv

log = logging.getLogger(__name__)


def metalhorn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "metalhorn", *args]


def accepts(address: addresses.Address) -> bool:
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        target: str | tuple[str, int] = address.path if address.is_unix else (address.host, address.port)
        try:
            sock.connect(target)
        except OSError:
            return False
        return True


@dataclasses.dataclass
class Child:
    name: str
    args: list[str]
    log_path: pathlib.Path
    ready_address: addresses.Address
    restart: bool = False
    max_restarts: int = 5
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self, *, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_ready(timeout=timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (start several, then wait_ready each: they boot in parallel)."""
        if self.ready_address.is_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.ready_address.path)
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        log.info("started %s", kv(child=self.name, pid=self.popen.pid, log=self.log_path))

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise errors.Unavailable(
                    f"{self.name} exited with code {self.popen.returncode} while starting; see {self.log_path}"
                )
            if accepts(self.ready_address):
                return
            time.sleep(0.05)
        raise errors.Unavailable(f"{self.name} did not listen on {self.ready_address} within {timeout}s")

    @property
    def exited(self) -> bool:
        return self.popen is not None and self.popen.poll() is not None

    def stop(self, *, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time, killing %s", kv(child=self.name, pid=self.popen.pid))
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)


class Supervisor:
    """Starts children in order, restarts those that may be restarted, stops them in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._stopping = False

    def start(self, child: Child) -> None:
        self.children.append(child)
        child.start()

    def request_stop(self, signum: int, _frame: object) -> None:
        log.info("stopping on signal %s", kv(signal=signal.Signals(signum).name))
        self._stopping = True

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM request an orderly stop (call before starting children: no window without them)."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self, *, poll_interval: float = 0.2) -> int:
        """Watch the children until a stop is requested; returns the exit code for the command."""
        code = 0
        while not self._stopping:
            for child in self.children:
                if not child.exited:
                    continue
                assert child.popen is not None
                rc = child.popen.returncode
                if child.restart and child.restarts < child.max_restarts:
                    child.restarts += 1
                    log.warning("child exited, restarting %s", kv(child=child.name, rc=rc, restarts=child.restarts))
                    try:
                        child.start()
                    except errors.MetalhornError as exc:
                        log.error("restart failed %s", kv(child=child.name, error=exc.message))
                elif child.restart:
                    log.error("child keeps failing, giving up %s", kv(child=child.name, rc=rc))
                    self._stopping = True
                    code = 1
                else:
                    log.warning("child exited %s", kv(child=child.name, rc=rc))
                    child.popen = None  # reported once
            time.sleep(poll_interval)
        self.stop_all()
        return code

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
