"""A layer-2 lab of network namespaces: three nodes and a client on one bridge (root only).

    mh-l2-<id>-br      bridge br0 (multicast snooping off, so solicitations reach every port)
    mh-l2-<id>-n1..n3  eth0 198.18.0.11-13/24, 2001:db8::11-13/64, MAC 02:00:00:00:00:11-13, forwarding on
    mh-l2-<id>-client  eth0 198.18.0.2/24,     2001:db8::2/64,      MAC 02:00:00:00:00:02

Addresses come only from 198.18.0.0/24 and 2001:db8::/64; nothing leaves the namespaces.  ``Lab`` is a context
manager: processes it started are killed by PID (process group) and the namespaces deleted, also on failure.
Shared by tests/linux/test_l2_*.py and bench/l2_failover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence

VIP4 = "198.18.0.100"
VIP6 = "2001:db8::100"
PROBE_PORT = 7946
BACKEND_PORT = 8080
NODES = ("n1", "n2", "n3")
ROOT = pathlib.Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

# A tiny HTTP backend: answers every GET with the node's name (which node served is what tests look at).
BACKEND = r"""
import http.server, socketserver, sys
name = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(name))); self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = __import__("socket").AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(__import__("socket").IPPROTO_IPV6, __import__("socket").IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", int(sys.argv[2])), H).serve_forever()
"""


@dataclasses.dataclass(frozen=True)
class Host:
    name: str  # n1, n2, n3, client
    ns: str
    ip4: str
    ip6: str
    mac: str


def sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


class Lab:
    def __init__(self, tag: str | None = None) -> None:
        self.prefix = f"mh-l2-{tag or uuid.uuid4().hex[:6]}"
        self.bridge_ns = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        for i, name in enumerate(NODES, start=11):
            self.hosts[name] = Host(
                name, f"{self.prefix}-{name}", f"198.18.0.{i}", f"2001:db8::{i}", f"02:00:00:00:00:{i}"
            )
        self.hosts["client"] = Host("client", f"{self.prefix}-client", "198.18.0.2", "2001:db8::2", "02:00:00:00:00:02")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.announcers: dict[str, subprocess.Popen[bytes]] = {}
        self.logdir = pathlib.Path(f"/tmp/{self.prefix}")

    # -- topology ---------------------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", self.bridge_ns)
        br = ("ip", "-n", self.bridge_ns)
        sh(*br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh(*br, "link", "set", "br0", "up")
        for h in self.hosts.values():
            sh("ip", "netns", "add", h.ns)
            port = f"p-{h.name}"
            sh(*br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            sh(*br, "link", "set", port, "master", "br0", "up")
            ns = ("ip", "-n", h.ns)
            self.sysctl(h.name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.eth0.accept_dad=0")
            sh(*ns, "link", "set", "eth0", "address", h.mac)
            sh(*ns, "link", "set", "lo", "up")
            sh(*ns, "link", "set", "eth0", "up")
            sh(*ns, "addr", "add", f"{h.ip4}/24", "dev", "eth0")
            sh(*ns, "addr", "add", f"{h.ip6}/64", "dev", "eth0", "nodad")
            if h.name != "client":
                self.sysctl(h.name, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

    def sysctl(self, host: str, *settings: str) -> None:
        sh("ip", "netns", "exec", self.hosts[host].ns, "sysctl", "-qw", *settings)

    def teardown(self) -> None:
        for p in self.procs:
            self._kill(p)
        self.procs.clear()
        for h in self.hosts.values():
            sh("ip", "netns", "del", h.ns, check=False)
        sh("ip", "netns", "del", self.bridge_ns, check=False)

    @staticmethod
    def _kill(p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)

    # -- processes --------------------------------------------------------------------------------------------

    def exec(self, host: str, *argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.hosts[host].ns, *argv, check=check, timeout=timeout)

    def spawn(self, host: str, *argv: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.logdir / log, "ab")  # noqa: SIM115 -- closed with the process
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[host].ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        self._kill(p, sig)
        if p in self.procs:
            self.procs.remove(p)

    def start_backend(self, host: str, port: int = BACKEND_PORT) -> subprocess.Popen[bytes]:
        p = self.spawn(host, PYTHON, "-c", BACKEND, host, str(port), log=f"backend-{host}.log")
        self.wait_for(lambda: self.exec(host, "ss", "-Hltn", f"sport = :{port}").stdout.strip() != "", what="backend")
        return p

    def start_announcer(
        self,
        host: str,
        *,
        vips: Sequence[str] = (VIP4, VIP6),
        endpoints: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        argv = [PYTHON, "-m", "metalhorn.daemons.main", "--log-level", "INFO", "l2", "announce", "--node", host]
        argv += ["--interface", "eth0"]
        for n in NODES:
            argv += ["--peer", f"{n}={self.hosts[n].ip4}:{PROBE_PORT}"]
        for v in vips:
            argv += ["--vip", v]
        for e in endpoints:
            argv += ["--endpoint", e]
        argv += list(extra)
        p = self.spawn(host, *argv, log=f"announce-{host}.log")
        self.announcers[host] = p
        return p

    def link(self, host: str, *, up: bool) -> None:
        sh("ip", "-n", self.hosts[host].ns, "link", "set", "eth0", "up" if up else "down")

    # -- observations from the client ----------------------------------------------------------------------------

    def arping(self, vip: str = VIP4, *, count: int = 3) -> list[str]:
        """MACs that answered ``count`` ARP requests from the client (arping 2.x, one line per reply)."""
        r = self.exec("client", "arping", "-c", str(count), "-w", "1000000", "-i", "eth0", vip, check=False)
        return re.findall(r"bytes from ([0-9a-f:]{17})", r.stdout)

    def ndisc(self, vip: str = VIP6) -> list[str]:
        """MACs in ndisc6's answers (-m: all of them; -n: numeric; -r 2 tries, 1 s each)."""
        r = self.exec("client", "ndisc6", "-m", "-n", "-r", "2", "-w", "1000", vip, "eth0", check=False)
        return [m.lower() for m in re.findall(r"Target link-layer address: ([0-9A-Fa-f:]{17})", r.stdout)]

    def node_of(self, mac: str) -> str | None:
        return next((h.name for h in self.hosts.values() if h.mac == mac.lower()), None)

    def owner(self, vip: str = VIP4) -> str | None:
        macs = set(self.arping(vip, count=1))
        return self.node_of(macs.pop()) if len(macs) == 1 else None

    def http(self, vip: str = VIP4, *, port: int = 80, timeout: float = 2.0) -> str | None:
        """One GET to vip:port from the client; the body (a node name) or None on failure."""
        host = f"[{vip}]" if ":" in vip else vip
        r = self.exec(
            "client", "curl", "-s", "-m", str(timeout), f"http://{host}:{port}/", check=False, timeout=timeout + 5
        )
        return r.stdout if r.returncode == 0 else None

    def flush_client_neighbours(self) -> None:
        self.exec("client", "ip", "neigh", "flush", "dev", "eth0", check=False)

    @staticmethod
    def wait_for(cond: object, *, what: str, timeout: float = 15.0, period: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():  # type: ignore[operator]
                return
            time.sleep(period)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextlib.contextmanager
def capture(lab: Lab, host: str, bpf: str, *, name: str) -> Iterator[pathlib.Path]:
    """tcpdump on ``host``'s eth0 into a pcap while the block runs; stopped (SIGINT, then KILL) on exit."""
    path = lab.logdir / f"{name}.pcap"
    p = lab.spawn(host, "tcpdump", "-i", "eth0", "-U", "-n", "-w", str(path), bpf, log=f"tcpdump-{name}.log")
    lab.wait_for(lambda: "listening on" in (lab.logdir / f"tcpdump-{name}.log").read_text(), what="tcpdump")
    try:
        yield path
    finally:
        time.sleep(0.2)
        lab.stop(p, signal.SIGINT)


def read_pcap(lab: Lab, path: pathlib.Path) -> list[str]:
    """tcpdump's one-line decoding with Ethernet headers (-e), one string per packet."""
    r = sh("tcpdump", "-r", str(path), "-n", "-e", "-tt", check=False)
    return [line for line in r.stdout.splitlines() if line.strip()]
