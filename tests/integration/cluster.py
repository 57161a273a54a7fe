"""A real `metalhorn up` cluster for integration tests, driven through the real CLI.

Everything started here is ended here, by PID: `up` itself, then (in case `up` could not stop them) every process
of its tree and every instance recorded in the nodes' instances.json that is still a metalhorn process. Every
wait is bounded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from tests.integration import harness


def children(pid: int) -> list[int]:
    try:
        text = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def descendants(pid: int) -> list[int]:
    result, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass
class Cluster:
    data_dir: pathlib.Path
    nodes: int = 3
    port: int = 0
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    log: pathlib.Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "METALHORN_MANAGER": self.url,
            "METALHORN_TOKEN_FILE": str(self.data_dir / "manager" / "token"),
        }

    def start(self, *, timeout: float = 120.0) -> str:
        """Run `metalhorn up` until it prints its banner; returns the output so far."""
        self.port = self.port or harness.free_port()
        self.starts += 1
        self.log = self.data_dir.parent / f"up-{self.starts}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *harness.METALHORN,
            "up",
            "--nodes",
            str(self.nodes),
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.extra,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log = self.log
        proc = self.proc
        harness.wait_until(
            lambda: "metalhorn is up" in log.read_text() or proc.poll() is not None, timeout=timeout, what="up"
        )
        text = log.read_text()
        assert proc.poll() is None, f"metalhorn up exited:\n{text}\n{self.logs()}"
        return text

    def stop(self, *, timeout: float = 90.0) -> int:
        """Ctrl-C (SIGINT) as a user would; returns up's exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise
        return int(self.proc.returncode)

    def kill_all(self) -> None:
        """Last resort in teardown: SIGKILL up's whole tree and every recorded instance that is ours."""
        pids: list[int] = []
        if self.proc is not None and self.proc.poll() is None:
            pids = [self.proc.pid, *descendants(self.proc.pid)]
        pids += [pid for pid in self.instance_pids() if "metalhorn" in cmdline(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def instance_pids(self, node: str | None = None) -> list[int]:
        pids = []
        for path in sorted((self.data_dir / "nodes").glob("*/run/instances.json")):
            if node is not None and path.parent.parent.name != node:
                continue
            with contextlib.suppress(OSError, ValueError):
                pids += [int(p) for p in json.loads(path.read_text()).get("instances", {}).values()]
        return pids

    def child_pid(self, needle: str) -> int:
        """PID of up's child whose command line contains `needle` (e.g. "manager", "--node node-2")."""
        assert self.proc is not None
        for pid in children(self.proc.pid):
            if needle in cmdline(pid):
                return pid
        raise LookupError(f"no child of up runs {needle!r}")

    def cli(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*harness.METALHORN, *args], capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"metalhorn {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def volume(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.json("volume", "get", name)
        return result

    def wait_volume(self, name: str, predicate: Any, *, timeout: float, what: str) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.volume(name)
            return bool(predicate(last))

        try:
            harness.wait_until(check, timeout=timeout, what=what, interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last record:\n{json.dumps(last, indent=2)}\n{self.logs()}") from None
        return last

    def logs(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.data_dir.glob("logs/*.log")) + sorted(self.data_dir.glob("nodes/*/logs/*.log")):
            with contextlib.suppress(OSError):
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                parts.append(f"--- {path.relative_to(self.data_dir)} ---\n{tail}")
        return "\n".join(parts)


def healthy_replicas(volume: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in (volume.get("status") or {}).get("replicas") or [] if r.get("mode") == "RW"]


@contextlib.contextmanager
def running_cluster(
    data_dir: pathlib.Path, *, nodes: int = 3, extra: tuple[str, ...] = (), block_devices: str = "off"
) -> Iterator[Cluster]:
    cluster = Cluster(data_dir=data_dir, nodes=nodes, extra=("--block-devices", block_devices, *extra))
    try:
        cluster.start()
        yield cluster
        assert cluster.stop() == 0, cluster.logs()
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.kill_all()


def qemu_io(uri: str, *commands: str, timeout: float = 120.0) -> str:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run([*args, uri], capture_output=True, text=True, timeout=timeout, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "failed" not in out.lower(), out
    return out
