"""A real `metalhorn up --netns` cluster plus namespaces that look at it from the LAN (root only).

    root namespace   bridge mh-up-br 198.18.0.1/24 (manager)          -- made by `metalhorn up --netns`
    mh-up-node-N     eth0 198.18.0.1N/24, 2001:db8::1N/64 (agents)     -- made by `metalhorn up --netns`
    mh-t<tag>-<role> eth0 on the same bridge (a client at .2, a router at .254)   -- made here

``Cluster`` is a context manager: it starts `up`, waits until it prints its banner, and on exit stops it with
SIGINT (which tears down the namespaces and the bridge), then kills whatever is left by PID -- the processes in
the node namespaces and the ones whose command line names this cluster's data directory -- and deletes the
namespaces it made itself, also when a test failed half way. Shared by tests/linux/test_lb_cluster_*.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tests.linux import l2lab

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
BRIDGE = "mh-up-br"
NODES = ("node-1", "node-2", "node-3")
UP_TIMEOUT = 120.0


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def node_ip(node: str) -> str:
    return f"198.18.0.{10 + int(node.rsplit('-', 1)[1])}"


def node_ip6(node: str) -> str:
    return f"2001:db8::{10 + int(node.rsplit('-', 1)[1])}"


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; bounded by ``timeout``; the last value in the error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            last, ok = exc, False
        else:
            ok = bool(last)
        if ok:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Cluster:
    def __init__(self, tag: str, *, nodes: int = 3) -> None:
        self.tag = tag
        self.nodes = NODES[:nodes]
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"mh-up-{tag}-"))
        self.namespaces: list[str] = []
        self.hosts: dict[str, str] = {}  # role -> namespace, of the hosts add_host made
        self.procs: list[subprocess.Popen[bytes]] = []
        self.up: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "METALHORN_MANAGER": "",
            "METALHORN_TOKEN_FILE": str(self.dir / "manager" / "token"),
        }

    # -- life cycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if any(line.startswith("mh-up-") for line in sh("ip", "netns", "list").stdout.splitlines()):
            raise RuntimeError("another `metalhorn up --netns` is running here (mh-up-* namespaces exist)")
        log = open(self.dir / "up.out", "ab")  # noqa: SIM115 -- closed once the child has it
        cmd = [PYTHON, "-m", "metalhorn", "up", "--netns", "--nodes", str(len(self.nodes))]
        cmd += ["--data-dir", str(self.dir), "--node-down-after", "3", "--block-devices", "off"]
        self.up = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def banner() -> str | None:
            assert self.up is not None
            if self.up.poll() is not None:
                raise AssertionError(f"metalhorn up exited ({self.up.returncode}):\n{self.output()[-3000:]}")
            m = re.search(r"METALHORN_MANAGER=(\S+)", self.output())
            return m.group(1) if m else None

        self.env["METALHORN_MANAGER"] = wait_for(banner, timeout=UP_TIMEOUT, what="metalhorn up's banner")

    def output(self) -> str:
        return (self.dir / "up.out").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            self._kill(p)
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(signal.SIGINT)
            try:
                self.up.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self._kill(self.up)
        # Whatever survived (a test killed `up`, or it hung): processes in the node namespaces, then ours by path.
        for node in self.nodes:
            for pid in sh("ip", "netns", "pids", f"mh-up-{node}", check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for pid in self._pids_naming(str(self.dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in self.namespaces:
            sh("ip", "netns", "del", name, check=False)
        for node in self.nodes:
            sh("ip", "netns", "del", f"mh-up-{node}", check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        if not os.environ.get("MH_KEEP_LOGS"):  # MH_KEEP_LOGS=1 keeps up.out and the agents' logs to read
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _pids_naming(text: str) -> list[int]:
        pids = []
        for proc in pathlib.Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
        return pids

    @staticmethod
    def _kill(p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)

    # -- the CLI ----------------------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [PYTHON, "-m", "metalhorn", *args], capture_output=True, text=True, timeout=30, env=self.env, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"metalhorn {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def apply(self, text: str, *, delete: bool = False) -> str:
        path = self.dir / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(text)
        return self.cli("delete" if delete else "apply", "-f", str(path))

    def services(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("lb", "services", "-o", "json")))

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.services() if s["name"] == name)

    def announcers(self, name: str, mode: str = "l2") -> list[str]:
        return sorted(a["node"] for a in self.service(name)["status"].get("announced_by") or [] if a["mode"] == mode)

    # -- namespaces on the bridge -----------------------------------------------------------------------------
    def add_host(self, role: str, ip4: str, ip6: str) -> str:
        """A namespace mh-t<tag>-<role> with eth0 on the cluster's bridge; returns its name."""
        ns = f"mh-t{self.tag}-{role}"
        veth = f"mht{self.tag}{role}"[:15]
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.hosts[role] = ns
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", "eth0")
        sh("ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
        return ns

    def spawn(self, ns: str, *argv: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / log, "ab")  # noqa: SIM115 -- closed once the child has it
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        self._kill(p)
        if p in self.procs:
            self.procs.remove(p)

    def start_backend(self, node: str, port: int = 8080) -> subprocess.Popen[bytes]:
        """l2lab's tiny HTTP server (answers its node name, IPv4 and IPv6) in ``node``'s namespace."""
        ns = f"mh-up-{node}"
        p = self.spawn(ns, PYTHON, "-c", l2lab.BACKEND, node, str(port), log=f"backend-{node}.log")

        def listening() -> str:
            return sh("ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}").stdout.strip()

        wait_for(listening, timeout=15, what=f"backend on {node}")
        return p

    def mac(self, node: str) -> str:
        out = sh("ip", "-n", f"mh-up-{node}", "-j", "link", "show", "eth0").stdout
        return str(json.loads(out)[0]["address"]).lower()

    def node_of_mac(self, mac: str) -> str | None:
        return next((n for n in self.nodes if self.mac(n) == mac.lower()), None)

    def agent_pid(self, node: str) -> int:
        for pid in sh("ip", "netns", "pids", f"mh-up-{node}").stdout.split():
            with contextlib.suppress(OSError):
                argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"agent" in argv and b"--node" in argv:
                    return int(pid)
        raise RuntimeError(f"no agent process in mh-up-{node}")

    def agent_metrics(self, node: str) -> str:
        return sh("curl", "-s", "-m", "3", f"http://{node_ip(node)}:9501/metrics").stdout
