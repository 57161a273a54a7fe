"""Plumbing shared by the benchmarks: child processes owned by PID, loopback ports, bounded waits.

Benchmarks start real daemons (nbdkit, `metalhorn replica serve`, `metalhorn engine serve`) and must never leak
them: every child is started here, recorded by PID, asked to stop with a signal, and killed after a bounded
grace period. Children also get PR_SET_PDEATHSIG so that even a SIGKILLed harness takes them down with it.
Stdlib only, so a benchmark runs with any Python 3.11.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A benchmark step failed; the message says which and carries the relevant log tail."""


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel SIGKILL the child when the harness dies (libc loaded in the parent)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return hook


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out on `host` (free now; the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_accepts(host: str, port: int, *, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Child:
    """One process we started; output goes to `log_path`. Stop it with stop(), always by its own PID."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = env
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise BenchError(f"{self.name} was never started")
        return self._popen.pid

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # a terminal Ctrl-C reaches only the harness, which then stops us in order
                preexec_fn=_pdeathsig_hook(),  # noqa: PLW1509 -- the harness is single-threaded
            )
        return self

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def send(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stop(self, *, grace: float = 10.0, signum: int = signal.SIGTERM) -> int | None:
        """Send `signum`, wait up to `grace` seconds, then SIGKILL. Returns the exit status."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self.send(signum)
            try:
                self._popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self._popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=5.0)
        return self._popen.poll()

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far (all threads), from /proc/PID/stat."""
        if not self.alive():
            return None
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # fields after the command name; utime, stime are 14 and 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def wait_until(
    what: str,
    ready: Callable[[], bool],
    *,
    timeout: float,
    children: Sequence[Child] = (),
    interval: float = 0.1,
) -> float:
    """Poll `ready` until it holds (returns the seconds it took); fail early if one of `children` exits."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        for child in children:
            if not child.alive():
                raise BenchError(
                    f"{child.name} exited with status {child.returncode()} while waiting for {what}:\n{child.tail()}"
                )
        if ready():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            logs = "\n".join(f"--- {c.name} ({c.log_path}):\n{c.tail()}" for c in children)
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(interval)


def nbd_ready(uri: str, *, expect_size: int | None = None) -> bool:
    """True once `nbdinfo --size URI` answers (and reports `expect_size`, if given)."""
    try:
        done = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    if done.returncode != 0:
        return False
    if expect_size is None:
        return True
    try:
        return int(done.stdout.strip()) == expect_size
    except ValueError:
        return False


def machine_info() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    uname = os.uname()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": f"{uname.sysname} {uname.release}",
        "hostname": uname.nodename,
    }


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=10, check=False, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = (done.stdout or done.stderr).strip().splitlines()
    return out[0] if out else "unknown"
