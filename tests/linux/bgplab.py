"""A BGP lab in network namespaces: one router (FRR, BIRD 2 or GoBGP), four node namespaces, one client.

    client c ──(198.18.1.0/24, 2001:db8:1::/64)── router r ──bridge br0 (198.18.0.0/24, 2001:db8::/64)── n1..n4

Namespaces are named ``mh-bgp-<tag>-<role>``. Nodes n1..n3 peer with the router without a password, n4 with the
TCP-MD5 password ``PASSWORD``. The router peers with 64512; nodes use 64512 (iBGP) or 64513 (eBGP) as ``Lab``
says. Every process the lab starts is killed by PID and every namespace deleted in ``close()``, which runs even
when set-up fails half way. Addresses: 198.18.0.0/15 and 2001:db8::/32 only; VIPs come from 198.19.0.0/24 and
2001:db8:100::/120.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
ROUTER_ASN = 64512
PASSWORD = "mh-lab-secret"
VIP4 = "198.19.0.10"
VIP6 = "2001:db8:100::10"
NODES = ("n1", "n2", "n3", "n4")


def node_v4(node: str) -> str:
    return f"198.18.0.{10 + int(node[1:])}"


def node_v6(node: str) -> str:
    return f"2001:db8::{10 + int(node[1:])}"


def run(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 20) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_for(check: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            last = exc
            ok = False
        else:
            ok = bool(last)
        if ok:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def speaker_config(*, node_asn: int, hold: int = 3, password: str = "", advertise: bool = True) -> str:
    peer_password = f"\n  password: {password}" if password else ""
    docs = [
        f"""apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: router}}
spec:
  myASN: {node_asn}
  peerASN: {ROUTER_ASN}
  peerAddress: 198.18.0.1
  holdTime: {hold}s
  keepaliveTime: 1s
  connectTime: 2s{peer_password}""",
        """apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: vips}
spec: {addresses: [198.19.0.0/24, "2001:db8:100::/120"]}""",
    ]
    if advertise:
        docs.append(
            """apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: vips}
spec:
  ipAddressPools: [vips]
  communities: ["64512:100", "large:64512:7:8"]
  localPref: 250"""
        )
    return "\n---\n".join(docs) + "\n"


# GoBGP learned FRR 8.3's ZAPI interface messages (16-byte IFNAMSIZ names instead of 20) in v3.18.0, commit
# 5f01c74a "Accommodate FRRouting interfaceNameSize changes". Older gobgpd misreads every ZEBRA_INTERFACE_ADD
# from such a zebra and panics on the loopback's (hw_addr_len 0): "slice bounds out of range [:4] with
# capacity 1" in zebra.(*interfaceUpdateBody).decodeFromBytes, and the whole gobgpd process exits.
GOBGP_ZAPI_FRR83 = (3, 18, 0)
FRR_SHORT_IFNAMES = (8, 3, 0)


def tool_version(cmd: list[str]) -> tuple[int, ...]:
    """The first dotted version number ``cmd`` prints (``gobgpd --version``, ``zebra --version``)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not m:
        raise RuntimeError(f"no version in {cmd}: {out!r}")
    return tuple(int(g or 0) for g in m.groups())


def gobgp_zebra_problem() -> str | None:
    """Why gobgpd cannot install routes through this machine's FRR zebra, or None when it can."""
    zebra = pathlib.Path("/usr/lib/frr/zebra")
    if not zebra.exists():
        return "no FRR zebra (/usr/lib/frr/zebra)"
    gobgpd = tool_version(["gobgpd", "--version"])
    frr = tool_version([str(zebra), "--version"])
    if gobgpd < GOBGP_ZAPI_FRR83 and frr >= FRR_SHORT_IFNAMES:
        return (
            f"gobgpd {'.'.join(map(str, gobgpd))} cannot parse FRR {'.'.join(map(str, frr))} zebra's "
            "ZAPI interface messages (IFNAMSIZ names since FRR 8.3; GoBGP handles them from 3.18.0) and panics"
        )
    return None


class Lab:
    def __init__(self, router: str, *, tag: str, node_asn: int) -> None:
        self.router = router
        self.tag = tag
        self.node_asn = node_asn
        self.internal = node_asn == ROUTER_ASN
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"mh-bgp-{tag}-"))
        os.chmod(self.dir, 0o755)
        self.namespaces: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: list[int] = []  # daemons that fork (FRR -d, BIRD): killed by pid file
        self.gobgp_zebra = False  # gobgpd installs routes through zebra (set by _start_gobgp)

    # -- names -------------------------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        return f"mh-bgp-{self.tag}-{role}"

    @property
    def r(self) -> str:
        return self.ns("r")

    # -- set-up / tear-down --------------------------------------------------------------------------------

    def setup(self) -> None:
        for role in ("r", "c", *NODES):
            name = self.ns(role)
            run("ip", "netns", "del", name, check=False)
            run("ip", "netns", "add", name)
            self.namespaces.append(name)
            run("ip", "link", "set", "lo", "up", ns=name)
        r = self.r
        run("ip", "link", "add", "br0", "type", "bridge", ns=r)
        run("ip", "link", "set", "br0", "up", ns=r)
        run("ip", "addr", "add", "198.18.0.1/24", "dev", "br0", ns=r)
        run("ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "br0", "nodad", ns=r)
        for sysctl in (
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv6.fib_multipath_hash_policy=1",
        ):
            run("sysctl", "-qw", sysctl, ns=r)
        for node in NODES:
            n = self.ns(node)
            run("ip", "link", "add", f"v{node}", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", n)
            run("ip", "link", "set", f"v{node}", "master", "br0", "up", ns=r)
            run("ip", "link", "set", "eth0", "up", ns=n)
            run("ip", "addr", "add", f"{node_v4(node)}/24", "dev", "eth0", ns=n)
            run("ip", "-6", "addr", "add", f"{node_v6(node)}/64", "dev", "eth0", "nodad", ns=n)
            run("ip", "route", "add", "default", "via", "198.18.0.1", ns=n)
            run("ip", "-6", "route", "add", "default", "via", "2001:db8::1", ns=n)
            # The VIPs live on every node, as MetalLB's speakers expect kube-proxy to accept them.
            run("ip", "addr", "add", f"{VIP4}/32", "dev", "lo", ns=n)
            run("ip", "-6", "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad", ns=n)
        c = self.ns("c")
        run("ip", "link", "add", "vc", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", c)
        run("ip", "link", "set", "vc", "up", ns=r)
        run("ip", "addr", "add", "198.18.1.1/24", "dev", "vc", ns=r)
        run("ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "vc", "nodad", ns=r)
        run("ip", "link", "set", "eth0", "up", ns=c)
        run("ip", "addr", "add", "198.18.1.2/24", "dev", "eth0", ns=c)
        run("ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad", ns=c)
        run("ip", "route", "add", "default", "via", "198.18.1.1", ns=c)
        run("ip", "-6", "route", "add", "default", "via", "2001:db8:1::1", ns=c)
        {"frr": self._start_frr, "bird": self._start_bird, "gobgp": self._start_gobgp}[self.router]()

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)
        subprocess.run(["rm", "-rf", str(self.dir), f"/var/run/frr/{self.ns('r')}"], check=False)

    def _spawn(self, name: str, cmd: list[str], *, ns: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def _pidfile(self, path: pathlib.Path) -> None:
        def read() -> int:
            return int(path.read_text().strip())

        self.pids.append(wait_for(read, timeout=10, what=f"pid file {path}"))

    # -- routers ---------------------------------------------------------------------------------------------

    def _neighbors(self) -> list[tuple[str, str]]:
        return [(node_v4(n), PASSWORD if n == "n4" else "") for n in NODES]

    def _start_frr(self) -> None:
        conf = self.dir / "frr.conf"
        lines = [
            "frr defaults datacenter",
            "hostname mh-lab",
            "ip forwarding",
            "ipv6 forwarding",
            f"router bgp {ROUTER_ASN}",
            " bgp router-id 198.18.0.1",
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " bgp bestpath as-path multipath-relax",
        ]
        for address, password in self._neighbors():
            lines.append(f" neighbor {address} remote-as {self.node_asn}")
            lines.append(f" neighbor {address} timers 1 3")
            lines.append(f" neighbor {address} timers connect 1")
            lines.append(f" neighbor {address} passive")
            if password:
                lines.append(f" neighbor {address} password {password}")
        for family in ("ipv4", "ipv6"):
            lines.append(f" address-family {family} unicast")
            lines.append("  maximum-paths 8")
            lines.append("  maximum-paths ibgp 8")
            for address, _ in self._neighbors():
                lines.append(f"  neighbor {address} activate")
            lines.append(" exit-address-family")
        conf.write_text("\n".join(lines) + "\n")
        rundir = self._start_zebra(conf)
        name = self.r
        common = ["-N", name, "-f", str(conf), "-d"]
        run("/usr/lib/frr/bgpd", *common, "-S", "-i", str(rundir / "bgpd.pid"), ns=name)
        self._pidfile(rundir / "bgpd.pid")
        wait_for(lambda: self.vtysh("show bgp summary json"), timeout=10, what="FRR vty")

    def _start_zebra(self, conf: pathlib.Path) -> pathlib.Path:
        """FRR's zebra in the router namespace with its own pathspace; returns its run directory.

        zebra runs as user ``frr`` (as root it refuses: not in group frrvty) and listens for route clients --
        FRR's bgpd or gobgpd -- on ``<rundir>/zserv.api``.
        """
        subprocess.run(["chown", "-R", "frr:frr", str(self.dir)], check=True)
        name = self.r
        rundir = pathlib.Path("/var/run/frr") / name
        rundir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "frr:frr", str(rundir)], check=True)
        common = ["-N", name, "-f", str(conf), "-d"]
        run("/usr/lib/frr/zebra", *common, "-u", "frr", "-g", "frr", "-i", str(rundir / "zebra.pid"), ns=name)
        self._pidfile(rundir / "zebra.pid")
        wait_for((rundir / "zserv.api").exists, timeout=10, what="zebra's zserv.api socket")
        return rundir

    def vtysh(self, command: str) -> Any:
        out = run("vtysh", "--vty_socket", f"/var/run/frr/{self.r}", "-c", command, ns=self.r)
        return json.loads(out) if out.strip() else {}

    def _start_bird(self) -> None:
        conf = self.dir / "bird.conf"
        parts = [
            "router id 198.18.0.1;",
            "protocol device {}",
            "protocol direct { ipv4; ipv6; }",
            "protocol kernel k4 { merge paths on limit 8; ipv4 { export all; }; }",
            "protocol kernel k6 { merge paths on limit 8; ipv6 { export all; }; }",
        ]
        for i, (address, password) in enumerate(self._neighbors(), 1):
            secret = f' password "{password}";' if password else ""
            gateway = " gateway direct;" if self.internal else ""
            parts.append(
                f"protocol bgp node{i} {{ local as {ROUTER_ASN}; neighbor {address} as {self.node_asn};"
                f" passive on; hold time 3; keepalive time 1; connect retry time 1;{secret}"
                f" ipv4 {{ import all; export none;{gateway} }};"
                f" ipv6 {{ import all; export none;{gateway} }}; }}"
            )
        conf.write_text("\n".join(parts) + "\n")
        sock = self.dir / "bird.ctl"
        pid = self.dir / "bird.pid"
        run("bird", "-c", str(conf), "-s", str(sock), "-P", str(pid), ns=self.r)
        self._pidfile(pid)
        self.bird_socket = str(sock)
        wait_for(lambda: self.birdc("show status"), timeout=10, what="BIRD control socket")

    def birdc(self, command: str) -> str:
        return run("birdc", "-s", self.bird_socket, *command.split(), ns=self.r, check=False)  # 1: no route

    def _start_gobgp(self) -> None:
        """gobgpd, with FRR's zebra beside it when gobgpd's ZAPI client can talk to this zebra.

        gobgpd alone installs no kernel routes. GoBGP's own answer (docs/sources/zebra.md, zebra-multipath.md)
        is its ``[zebra]`` client: gobgpd hands best paths to an FRR zebra over ZAPI and zebra programs the
        kernel; with ``use-multiple-paths`` every equal path goes in one ZEBRA_ROUTE_ADD, so the kernel gets a
        multipath route. ``software-name`` tells gobgpd which FRR's ZAPI 6 dialect to speak (FRR 8.2 renumbered
        the commands, 8.3 shortened interface names). No redistribution: GoBGP's RIB holds only what the
        speakers announce.

        Where that pairing cannot work (see ``gobgp_zebra_problem``), gobgpd runs alone and
        ``install_gobgp_best_path`` puts its chosen path into the kernel instead.
        """
        parts = [
            "[global.config]",
            f"  as = {ROUTER_ASN}",
            '  router-id = "198.18.0.1"',
            "  port = 179",
            "[global.use-multiple-paths.config]",
            "  enabled = true",
        ]
        self.gobgp_zebra = gobgp_zebra_problem() is None
        if self.gobgp_zebra:
            zebra_conf = self.dir / "zebra.conf"
            zebra_conf.write_text("hostname mh-lab-zebra\n")
            rundir = self._start_zebra(zebra_conf)
            major, minor = tool_version(["/usr/lib/frr/zebra", "--version"])[:2]
            parts += [
                "[zebra.config]",
                "  enabled = true",
                f'  url = "unix:{rundir / "zserv.api"}"',
                "  version = 6",
                f'  software-name = "frr{major}.{minor}"',
                "  redistribute-route-type-list = []",
            ]
        for address, password in self._neighbors():
            parts += [
                "[[neighbors]]",
                "  [neighbors.config]",
                f'    neighbor-address = "{address}"',
                f"    peer-as = {self.node_asn}",
            ]
            if password:
                parts.append(f'    auth-password = "{password}"')
            parts += [
                "  [neighbors.timers.config]",
                "    hold-time = 3",
                "    keepalive-interval = 1",
                "    connect-retry = 1",
                "  [neighbors.transport.config]",
                "    passive-mode = true",
            ]
            for family in ("ipv4-unicast", "ipv6-unicast"):
                parts += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]"]
                parts.append(f'      afi-safi-name = "{family}"')
        conf = self.dir / "gobgpd.toml"
        conf.write_text("\n".join(parts) + "\n")
        self._spawn("gobgpd", ["gobgpd", "-f", str(conf), "-t", "toml", "--api-hosts", "127.0.0.1:50051"], ns=self.r)
        wait_for(lambda: run("gobgp", "neighbor", "-j", ns=self.r), timeout=10, what="gobgpd API")

    # -- speakers --------------------------------------------------------------------------------------------

    def start_speaker(self, node: str, *, password: str = "", advertise: bool = True, hold: int = 3) -> None:
        self.kill(f"speaker-{node}")
        conf = self.dir / f"speaker-{node}.yaml"
        conf.write_text(speaker_config(node_asn=self.node_asn, hold=hold, password=password, advertise=advertise))
        cmd = [
            PYTHON,
            "-m",
            "metalhorn.daemons.main",
            "--log-level",
            "DEBUG",
            "bgp",
            "speak",
            "--config",
            str(conf),
            "--node",
            node,
            "--router-id",
            node_v4(node),
            "--vip",
            VIP4,
            "--vip",
            VIP6,
            "--next-hop-v6",
            node_v6(node),
        ]
        self._spawn(f"speaker-{node}", cmd, ns=self.ns(node))

    def reconfigure_speaker(self, node: str, *, advertise: bool, password: str = "") -> None:
        conf = self.dir / f"speaker-{node}.yaml"
        conf.write_text(speaker_config(node_asn=self.node_asn, password=password, advertise=advertise))
        self.procs[f"speaker-{node}"].send_signal(signal.SIGHUP)

    def speaker_running(self, node: str) -> bool:
        proc = self.procs.get(f"speaker-{node}")
        return proc is not None and proc.poll() is None

    # -- what the router knows -------------------------------------------------------------------------------

    def established(self) -> set[str]:
        """Node addresses whose session the router reports Established."""
        if self.router == "frr":
            peers = self.vtysh("show bgp neighbors json")
            return {a for a, p in peers.items() if p.get("bgpState") == "Established"}
        if self.router == "bird":
            out = self.birdc("show protocols")
            up = {int(m.group(1)) for m in re.finditer(r"^node(\d+)\s+BGP\s+\S+\s+up\s+\S+\s+Established", out, re.M)}
            return {node_v4(f"n{i}") for i in up}
        peers = json.loads(run("gobgp", "neighbor", "-j", ns=self.r))
        return {p["state"]["neighbor_address"] for p in peers if p["state"].get("session_state") == 6}

    def rib(self, prefix: str) -> list[dict[str, Any]]:
        """The router's BGP paths for ``prefix``: [{next_hop, communities, large_communities, local_pref}]."""
        return {"frr": self._rib_frr, "bird": self._rib_bird, "gobgp": self._rib_gobgp}[self.router](prefix)

    def _rib_frr(self, prefix: str) -> list[dict[str, Any]]:
        family = "ipv6" if ":" in prefix else "ipv4"
        data = self.vtysh(f"show bgp {family} unicast {prefix} json")
        out = []
        for path in data.get("paths", []):
            hops = [h["ip"] for h in path.get("nexthops", []) if h.get("scope", "global") == "global"]
            out.append(
                {
                    "next_hop": hops[0] if hops else None,
                    "communities": sorted(path.get("community", {}).get("string", "").split()),
                    "large_communities": sorted(path.get("largeCommunity", {}).get("string", "").split()),
                    "local_pref": path.get("locPrf", path.get("localpref")),
                }
            )
        return out

    def _rib_bird(self, prefix: str) -> list[dict[str, Any]]:
        out = self.birdc(f"show route {prefix} all")
        paths: list[dict[str, Any]] = []
        for block in re.split(r"\n(?=\S|\s+unicast \[)", out):
            m = re.search(r"unicast \[node\d+ [^\]]*\].*?\n\s+via (\S+)", block, re.S)
            if not m:
                continue
            comm = re.search(r"BGP\.community: (.*)", block)
            large = re.search(r"BGP\.large_community: (.*)", block)
            pref = re.search(r"BGP\.local_pref: (\d+)", block)
            paths.append(
                {
                    "next_hop": m.group(1),
                    "communities": sorted(":".join(c) for c in re.findall(r"\((\d+),\s*(\d+)\)", comm.group(1)))
                    if comm
                    else [],
                    "large_communities": sorted(
                        ":".join(c) for c in re.findall(r"\((\d+),\s*(\d+),\s*(\d+)\)", large.group(1))
                    )
                    if large
                    else [],
                    "local_pref": int(pref.group(1)) if pref else None,
                }
            )
        return paths

    def _rib_gobgp(self, prefix: str) -> list[dict[str, Any]]:
        family = "ipv6" if ":" in prefix else "ipv4"
        data = json.loads(run("gobgp", "global", "rib", "-a", family, prefix, "-j", ns=self.r) or "{}")
        out = []
        for path in next(iter(data.values()), []) if data else []:
            entry: dict[str, Any] = {"next_hop": None, "communities": [], "large_communities": [], "local_pref": None}
            for attr in path.get("attrs", []):
                kind = attr.get("type")
                if kind in (3, 14):  # NEXT_HOP, MP_REACH_NLRI
                    entry["next_hop"] = attr.get("nexthop")
                elif kind == 5:
                    entry["local_pref"] = attr.get("value")
                elif kind == 8:
                    entry["communities"] = sorted(f"{c >> 16}:{c & 0xFFFF}" for c in attr.get("communities", []))
                elif kind == 32:
                    entry["large_communities"] = sorted(
                        f"{c['ASN']}:{c['LocalData1']}:{c['LocalData2']}" for c in attr.get("value", [])
                    )
            out.append(entry)
        return out

    @property
    def router_programs_kernel(self) -> bool:
        """True when the router daemon itself installs its BGP routes in the kernel (FRR, BIRD, GoBGP+zebra)."""
        return self.router != "gobgp" or self.gobgp_zebra

    def gobgp_best_next_hop(self, prefix: str) -> str | None:
        """The next hop of the path gobgpd marks best for ``prefix`` (None when it has none)."""
        family = "ipv6" if ":" in prefix else "ipv4"
        data = json.loads(run("gobgp", "global", "rib", "-a", family, prefix, "-j", ns=self.r) or "{}")
        paths = [p for p in next(iter(data.values()), []) if p.get("best")] if data else []
        for attr in paths[0].get("attrs", []) if paths else []:
            if attr.get("type") in (3, 14):  # NEXT_HOP, MP_REACH_NLRI
                return str(attr["nexthop"])
        return None

    def install_gobgp_best_path(self, prefix: str) -> str:
        """Put gobgpd's best path for ``prefix`` into the router's kernel (``proto bgp``); returns its next hop.

        Only for a gobgpd that cannot reach zebra (``gobgp_zebra_problem``): the lab plays the FIB agent that
        GoBGP users without zebra run on its API, with one route -- the path GoBGP itself chose, not our pick.
        """
        hop = wait_for(lambda: self.gobgp_best_next_hop(prefix), timeout=10, what=f"GoBGP best path for {prefix}")
        family = "-6" if ":" in prefix else "-4"
        run("ip", family, "route", "replace", prefix, "via", hop, "proto", "bgp", ns=self.r)
        return str(hop)

    def remove_kernel_route(self, prefix: str) -> None:
        family = "-6" if ":" in prefix else "-4"
        run("ip", family, "route", "del", prefix, ns=self.r, check=False)

    def kernel_next_hops(self, prefix: str) -> set[str]:
        """Gateways of the router's kernel route for ``prefix`` (several when ECMP)."""
        family = "-6" if ":" in prefix else "-4"
        routes = json.loads(run("ip", family, "-j", "route", "show", prefix, ns=self.r) or "[]")
        hops: set[str] = set()
        for route in routes:
            if "gateway" in route:
                hops.add(route["gateway"])
            for hop in route.get("nexthops", []):
                if "gateway" in hop:
                    hops.add(hop["gateway"])
        return hops

    def python_in(self, role: str, code: str, *, timeout: float = 10) -> str:
        return run(sys.executable, "-c", code, ns=self.ns(role), timeout=timeout)

    def start_web(self, node: str, port: int = 8080) -> None:
        """A tiny HTTP server bound to both VIPs in ``node``'s namespace, answering its node name."""
        code = (
            "import http.server, socket, sys, threading\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        body = sys.argv[1].encode()\n"
            "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
            "        self.end_headers(); self.wfile.write(body)\n"
            "    def log_message(self, *a): pass\n"
            "class S6(http.server.HTTPServer):\n"
            "    address_family = socket.AF_INET6\n"
            f"a = http.server.HTTPServer(('{VIP4}', {port}), H)\n"
            f"b = S6(('{VIP6}', {port}), H)\n"
            "threading.Thread(target=b.serve_forever, daemon=True).start()\n"
            "a.serve_forever()\n"
        )
        self._spawn(f"web-{node}", [sys.executable, "-c", code, node], ns=self.ns(node))

    def fetch(self, url: str) -> str:
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=3).read().decode())"
        return self.python_in("c", code).strip()
