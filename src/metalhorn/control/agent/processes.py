"""The agent's process plumbing: launching instances, ports, the instance record, and orphan clean-up.

`<data-path>/run/instances.json` holds {"instances": {name: pid}, "ports": {name: port}}. PIDs let a restarted
agent end what a killed agent left running (only if /proc/PID/cmdline is a metalhorn process -- a PID may have
been reused); ports let instances come back on the same address, so engines and the manager need not learn a
new one after an agent restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

from metalhorn.common import addresses, errors, logs
from metalhorn.control.agent import instances

log = logging.getLogger(__name__)


def metalhorn_command(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "metalhorn", *args)


class PopenLauncher:
    """Starts each instance in its own session (Ctrl-C on the agent's terminal does not reach it), output
    appended to the instance's log file."""

    def launch(self, spec: instances.InstanceSpec) -> instances.Process:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if spec.listen.is_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spec.listen.path)
        with spec.log_path.open("ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(spec.args)}\n".encode())
            out.flush()
            return subprocess.Popen(
                list(spec.args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    async def accepts(self, address: addresses.Address) -> bool:
        try:
            async with asyncio.timeout(1.0):
                if address.is_unix:
                    _reader, writer = await asyncio.open_unix_connection(address.path)
                else:
                    _reader, writer = await asyncio.open_connection(address.host, address.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


# -- ports --------------------------------------------------------------------------------------------------------


def bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise errors.InvalidArgument(
                f"cannot listen on {host}: {exc.strerror or exc}; pass an address of this host as --listen-ip"
            ) from exc
        return int(sock.getsockname()[1])


class PortBook:
    """One port per instance name, kept across agent restarts (in the instance record)."""

    def __init__(self, host: str, ports: Mapping[str, int] | None = None) -> None:
        self.host = host
        self._ports = dict(ports or {})

    def port(self, name: str) -> int:
        if name not in self._ports:
            used = set(self._ports.values())
            for _attempt in range(20):
                port = free_port(self.host)
                if port not in used:
                    break
            self._ports[name] = port
        return self._ports[name]

    def refresh_taken(self) -> None:
        """At start (no instance of ours running): forget ports someone else took meanwhile."""
        for name, port in list(self._ports.items()):
            if not bindable(self.host, port):
                log.warning("recorded port is taken, choosing another %s", logs.kv(instance=name, port=port))
                del self._ports[name]

    def keep_only(self, names: Iterable[str]) -> None:
        keep = set(names)
        self._ports = {name: port for name, port in self._ports.items() if name in keep}

    def as_dict(self) -> dict[str, int]:
        return dict(self._ports)


# -- the instance record ------------------------------------------------------------------------------------------


class InstanceRecord:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def load(self) -> tuple[dict[str, int], dict[str, int]]:
        """(pids, ports); a missing file is empty, a damaged one is reported and treated as empty."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as exc:
            log.warning("instance record unreadable, ignoring it %s", logs.kv(path=self.path, error=exc))
            return {}, {}
        pids = {str(k): int(v) for k, v in (data.get("instances") or {}).items() if isinstance(v, int)}
        ports = {str(k): int(v) for k, v in (data.get("ports") or {}).items() if isinstance(v, int)}
        return pids, ports

    def save(self, *, pids: Mapping[str, int], ports: Mapping[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"instances": dict(pids), "ports": dict(ports)}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def is_metalhorn_process(pid: int) -> bool:
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    parts = cmdline.split(b"\0")
    return any(part == b"metalhorn" or part.endswith(b"/metalhorn") for part in parts)


def end_orphans(pids: Mapping[str, int], *, grace: float = 10.0) -> list[int]:
    """SIGTERM every recorded PID that is still a metalhorn process, SIGKILL those alive after `grace`.

    Returns the PIDs that were signalled. Blocking: called once at agent start, before the event loop work.
    """
    ended = []
    for name, pid in sorted(pids.items()):
        if pid <= 1 or pid == os.getpid() or not is_metalhorn_process(pid):
            continue
        log.warning("ending orphaned instance %s", logs.kv(instance=name, pid=pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        ended.append(pid)
    deadline = time.monotonic() + grace
    remaining = list(ended)
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if _alive(pid)]
        if remaining:
            time.sleep(0.05)
    for pid in remaining:
        log.warning("orphan did not stop in time, killing %s", logs.kv(pid=pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return ended


def _alive(pid: int) -> bool:
    """True while the PID exists and is not a zombie (orphans are not our children, so we cannot reap them)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0:1]
    return state != ["Z"]
