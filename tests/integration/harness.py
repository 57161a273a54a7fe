"""Process harness for integration tests: real `metalhorn replica serve` / `engine serve` processes.

Every process is started by this module, remembered by PID, and ended by PID in teardown (never by name).
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

METALHORN = [sys.executable, "-m", "metalhorn"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: object, *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclasses.dataclass
class Proc:
    name: str
    args: list[str]
    log: pathlib.Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; SIGKILL when it does not exit in time. Returns the exit code."""
        assert self.popen is not None
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.popen.returncode)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclasses.dataclass
class LocalVolume:
    """One engine with an NBD export over N replica processes, all on loopback."""

    root: pathlib.Path
    name: str = "vol"
    size: int = 256 << 20
    replica_count: int = 3
    replicas: list[Proc] = dataclasses.field(default_factory=list)
    replica_ports: list[int] = dataclasses.field(default_factory=list)
    engine: Proc | None = None
    nbd_port: int = 0

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.nbd_port}/{self.name}"

    @property
    def control(self) -> str:
        return f"unix:{self.root / 'engine.ctl'}"

    def replica_dir(self, index: int) -> pathlib.Path:
        return self.root / f"replica-{index}"

    def start_replica(self, index: int) -> None:
        port = self.replica_ports[index]
        proc = Proc(
            f"replica-{index}",
            [
                *METALHORN,
                "replica",
                "serve",
                str(self.replica_dir(index)),
                "--size",
                str(self.size),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            self.root / f"replica-{index}.log",
        )
        proc.start()
        self.replicas[index] = proc
        wait_until(lambda: port_open(port) or not proc.alive, timeout=20, what=f"replica {index} on port {port}")
        assert proc.alive, f"replica {index} exited:\n{proc.tail()}"

    def start_engine(self, extra: tuple[str, ...] = ()) -> None:
        self.nbd_port = self.nbd_port or free_port()
        ctl = self.root / "engine.ctl"
        with contextlib.suppress(FileNotFoundError):
            ctl.unlink()
        args = [*METALHORN, "engine", "serve", self.name, "--size", str(self.size)]
        for port in self.replica_ports:
            args += ["--replica", f"tcp://127.0.0.1:{port}"]
        args += ["--frontend", "nbd", "--listen", f"127.0.0.1:{self.nbd_port}", "--control", self.control, *extra]
        proc = Proc("engine", args, self.root / "engine.log")
        proc.start()
        self.engine = proc
        port = self.nbd_port
        wait_until(lambda: port_open(port) or not proc.alive, timeout=20, what=f"engine NBD port {port}")
        assert proc.alive, f"engine exited:\n{proc.tail()}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.replica_ports:
            self.replica_ports = [free_port() for _ in range(self.replica_count)]
            self.replicas = [Proc("", [], self.root / "unused.log") for _ in range(self.replica_count)]
        for index in range(self.replica_count):
            self.start_replica(index)
        self.start_engine()

    def info(self) -> dict[str, object]:
        out = subprocess.run(
            [*METALHORN, "engine", "info", "--control", self.control, "-o", "json"],
            capture_output=True,
            timeout=20,
            check=True,
        )
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def replica_modes(self) -> list[str]:
        replicas = self.info()["replicas"]
        assert isinstance(replicas, list)
        return [str(r["mode"]) for r in replicas]

    def inspect(self, index: int) -> dict[str, object]:
        out = subprocess.run(
            [*METALHORN, "replica", "inspect", str(self.replica_dir(index)), "-o", "json", "--checksum"],
            capture_output=True,
            timeout=120,
            check=True,
        )
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def stop(self) -> None:
        if self.engine is not None and self.engine.popen is not None:
            self.engine.stop()
        for proc in self.replicas:
            if proc.popen is not None:
                proc.stop()

    def kill_all(self) -> None:
        for proc in [self.engine, *self.replicas]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()

    def logs(self) -> str:
        parts = []
        for proc in [self.engine, *self.replicas]:
            if proc is not None and proc.popen is not None:
                parts.append(f"--- {proc.name} ---\n{proc.tail()}")
        return "\n".join(parts)


@contextlib.contextmanager
def local_volume(root: pathlib.Path, **kwargs: object) -> Iterator[LocalVolume]:
    volume = LocalVolume(root=root, **kwargs)  # type: ignore[arg-type]
    try:
        volume.start()
        yield volume
    except BaseException:
        print(volume.logs(), file=sys.stderr)
        raise
    finally:
        volume.kill_all()
