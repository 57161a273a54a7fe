"""Record real BGP messages from FRR, BIRD 2 and GoBGP for the decoder tests (tests/unit/test_bgp_captured.py).

Run by hand as root (not a pytest module; nothing here is collected):

    .venv/bin/python tests/linux/bgp_capture.py [frr] [bird] [gobgp] [--out DIR] [--pcap-dir DIR]

For each router a two-namespace lab is built (``mh-cap-<router>-r`` and ``mh-cap-<router>-p`` joined by one veth,
198.18.64.0/24 and 2001:db8:64::/64). The router (AS 4200000001, a 4-octet ASN) is passive; in the peer namespace
two tiny recording peers (``peer`` sub-command below) connect from 198.18.64.2 (iBGP, AS 4200000001) and
198.18.64.3 (eBGP, AS 64513) and offer multiprotocol IPv4/IPv6 unicast, route refresh, graceful restart (so the
routers send End-of-RIB) and 4-octet AS. The router is told to originate, through its own configuration language,

    198.18.100.0/24, 198.18.101.10/32, 2001:db8:100::/64, 2001:db8:101::10/128
    communities 65000:100 65000:200, large community 4200000001:1:2, MED 50, LOCAL_PREF 250 (iBGP only)

then to withdraw the /32 and the /128, to ask for a route refresh (soft reset in), and to shut both neighbours
down with the shutdown communication "maintenance" (Cease / Administrative Shutdown). ``tcpdump -w`` records the
veth in the router's namespace; the pcap is parsed here with the stdlib (Ethernet, IPv4/IPv6, TCP), each TCP
direction reassembled, cut with metalhorn's Framer, and the first message of each kind the router sent on each
session is written to ``tests/unit/data/bgp/captured/<router>-<what>[-ebgp].hex``. Every namespace, tcpdump and
daemon is removed / killed by PID in a ``finally`` block, also when a step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import ipaddress
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from metalhorn.lb.bgp.messages import capabilities as caps
from metalhorn.lb.bgp.messages import codec, header, nlri, open_message, simple, update

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "unit" / "data" / "bgp" / "captured"
ROUTER_ASN = 4200000001
EBGP_ASN = 64513
ROUTER4, ROUTER6 = "198.18.64.1", "2001:db8:64::1"
IBGP_PEER, EBGP_PEER = "198.18.64.2", "198.18.64.3"
PEER6 = "2001:db8:64::2"
KEEP4, GONE4 = "198.18.100.0/24", "198.18.101.10/32"
KEEP6, GONE6 = "2001:db8:100::/64", "2001:db8:101::10/128"
COMMUNITIES = ((65000, 100), (65000, 200))
LARGE = (ROUTER_ASN, 1, 2)
MED, LOCAL_PREF = 50, 250
SHUTDOWN_MESSAGE = "maintenance"
PEERS = {IBGP_PEER: ("", ROUTER_ASN), EBGP_PEER: ("-ebgp", EBGP_ASN)}


# -- pcap -> TCP streams -> BGP messages (stdlib only) ---------------------------------------------------------


def pcap_packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(link type, frame) of every record of a classic pcap file (either byte order, us or ns stamps)."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"not a pcap file (magic {magic.hex()})")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    offset = 24
    record = struct.Struct(endian + "IIII")
    while offset + record.size <= len(data):
        _sec, _frac, caplen, _origlen = record.unpack_from(data, offset)
        offset += record.size
        yield linktype, data[offset : offset + caplen]
        offset += caplen


@dataclasses.dataclass
class Stream:
    """One direction of one TCP connection: segments keyed by sequence number, the ISN from the SYN."""

    src: tuple[str, int]
    dst: tuple[str, int]
    isn: int | None = None
    segments: dict[int, bytes] = dataclasses.field(default_factory=dict)

    def payload(self) -> bytes:
        """The in-order bytes from the SYN on; stops at the first gap (retransmissions overlap harmlessly)."""
        if self.isn is None:
            raise ValueError(f"no SYN seen for {self.src} -> {self.dst}")
        out = bytearray()
        expected = 0
        for rel, data in sorted(((seq - self.isn - 1) % 2**32, data) for seq, data in self.segments.items()):
            if rel > expected:
                print(f"warning: gap in {self.src} -> {self.dst} at {expected}", file=sys.stderr)
                break
            out += data[expected - rel :]
            expected = max(expected, rel + len(data))
        return bytes(out)


def tcp_streams(pcap: bytes) -> list[Stream]:
    """Every TCP direction in the capture, a new Stream for each SYN (a reconnect from the same port)."""
    current: dict[tuple[tuple[str, int], tuple[str, int]], Stream] = {}
    streams: list[Stream] = []
    for linktype, frame in pcap_packets(pcap):
        if linktype == 1:  # Ethernet, maybe 802.1Q tagged
            ethertype, offset = struct.unpack_from(">H", frame, 12)[0], 14
            while ethertype == 0x8100:
                ethertype, offset = struct.unpack_from(">H", frame, offset + 2)[0], offset + 4
        elif linktype == 113:  # Linux cooked (tcpdump -i any)
            ethertype, offset = struct.unpack_from(">H", frame, 14)[0], 16
        else:
            raise ValueError(f"link type {linktype} not handled")
        if ethertype == 0x0800:
            ihl = (frame[offset] & 0x0F) * 4
            (total,) = struct.unpack_from(">H", frame, offset + 2)
            if frame[offset + 9] != 6:
                continue
            src = str(ipaddress.IPv4Address(frame[offset + 12 : offset + 16]))
            dst = str(ipaddress.IPv4Address(frame[offset + 16 : offset + 20]))
            end, offset = offset + total, offset + ihl
        elif ethertype == 0x86DD:
            (payload_length,) = struct.unpack_from(">H", frame, offset + 4)
            if frame[offset + 6] != 6:  # no extension headers on these links
                continue
            src = str(ipaddress.IPv6Address(frame[offset + 8 : offset + 24]))
            dst = str(ipaddress.IPv6Address(frame[offset + 24 : offset + 40]))
            end, offset = offset + 40 + payload_length, offset + 40
        else:
            continue
        sport, dport, seq, _ack, offset_flags = struct.unpack_from(">HHIIH", frame, offset)
        data = frame[offset + (offset_flags >> 12) * 4 : end]
        key = ((src, sport), (dst, dport))
        stream = current.get(key)
        if offset_flags & 0x02:  # SYN
            if stream is None or stream.isn != seq:
                stream = current[key] = Stream(key[0], key[1], isn=seq)
                streams.append(stream)
            continue
        if stream is not None and data:
            stream.segments.setdefault(seq, data)
    return streams


# -- the recording peer -----------------------------------------------------------------------------------------


def peer_open(local: str, asn: int) -> bytes:
    graceful_restart = bytes.fromhex("0000" + "00010100" + "00020100")  # helper, restart time 0, v4 + v6
    message = open_message.Open.build(
        asn=asn,
        hold_time=9,
        bgp_id=ipaddress.IPv4Address(local),
        capabilities=(
            caps.Multiprotocol(nlri.Afi.IPV4, nlri.Safi.UNICAST),
            caps.Multiprotocol(nlri.Afi.IPV6, nlri.Safi.UNICAST),
            caps.RouteRefresh(),
            caps.Unknown(caps.Code.GRACEFUL_RESTART, graceful_restart),
        ),
    )
    return codec.encode(message)


def run_peer(*, local: str, router: str, asn: int, lifetime: float) -> int:
    """Connect to ``router`` from ``local``, send OPEN, answer its OPEN with KEEPALIVEs; reconnect when closed."""
    keepalive = codec.encode(simple.Keepalive())
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection((router, 179), timeout=2, source_address=(local, 0))
        except OSError:
            time.sleep(0.5)
            continue
        with sock:
            sock.sendall(peer_open(local, asn))
            framer = header.Framer()
            opened = False
            last = 0.0
            sock.settimeout(0.5)
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    data = None
                except OSError:
                    break
                if data == b"":
                    break
                if data:
                    opened = opened or any(m.type == header.MessageType.OPEN for m in framer.feed(data))
                if opened and time.monotonic() - last >= 1:
                    sock.sendall(keepalive)
                    last = time.monotonic()
        time.sleep(1)
    return 0


# -- the lab ------------------------------------------------------------------------------------------------------


def sh(*cmd: str, ns: str | None = None, check: bool = True, timeout: float = 20) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()} {done.stdout.strip()}")
    return done.stdout


def wait_for(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Lab:
    def __init__(self, router: str, workdir: pathlib.Path) -> None:
        self.router = router
        self.dir = workdir
        self.r, self.p = f"mh-cap-{router}-r", f"mh-cap-{router}-p"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []
        self.pcap = workdir / f"{router}.pcap"
        self.version = ""

    def spawn(self, name: str, cmd: list[str], *, ns: str) -> subprocess.Popen[bytes]:
        with open(self.dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def pidfile(self, path: pathlib.Path) -> None:
        self.pids.append(wait_for(lambda: int(path.read_text().strip()), timeout=10, what=f"pid file {path}"))

    def setup(self) -> None:
        for name in (self.r, self.p):
            sh("ip", "netns", "del", name, check=False)
            sh("ip", "netns", "add", name)
            self.namespaces.append(name)
            sh("ip", "link", "set", "lo", "up", ns=name)
        sh("ip", "link", "add", "eth0", "netns", self.r, "type", "veth", "peer", "name", "eth0", "netns", self.p)
        for ns, v4s, v6 in ((self.r, [ROUTER4], ROUTER6), (self.p, [IBGP_PEER, EBGP_PEER], PEER6)):
            sh("ip", "link", "set", "eth0", "up", ns=ns)
            for address in v4s:
                sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
            sh("ip", "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad", ns=ns)
        self.spawn(
            "tcpdump",
            ["tcpdump", "-i", "eth0", "-Z", "root", "-U", "-s", "0", "-w", str(self.pcap), "tcp port 179"],
            ns=self.r,
        )
        wait_for(self.pcap.exists, timeout=10, what="tcpdump to open its file")
        getattr(self, f"_start_{self.router}")()
        for local, (_, asn) in PEERS.items():
            cmd = [sys.executable, __file__, "peer", "--local", local, "--router", ROUTER4, "--asn", str(asn)]
            self.spawn(f"peer-{local}", cmd, ns=self.p)

    def stop_tcpdump(self) -> None:
        proc = self.procs[0]
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in self.namespaces:
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(f"/var/run/frr/{self.r}", ignore_errors=True)

    # -- FRR ------------------------------------------------------------------------------------------------

    def vtysh(self, *commands: str) -> str:
        args = [a for c in commands for a in ("-c", c)]
        return sh("vtysh", "--vty_socket", f"/var/run/frr/{self.r}", *args, ns=self.r)

    def _start_frr(self) -> None:
        self.version = "FRR " + sh("/usr/lib/frr/bgpd", "--version").split()[2]
        lines = [
            "frr defaults datacenter",
            "hostname mh-cap-frr",
            "route-map MH permit 10",
            " set community " + " ".join(f"{a}:{b}" for a, b in COMMUNITIES),
            " set large-community {}:{}:{}".format(*LARGE),
            f" set local-preference {LOCAL_PREF}",
            f" set metric {MED}",
            f"router bgp {ROUTER_ASN}",
            f" bgp router-id {ROUTER4}",
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " no bgp network import-check",
        ]
        for address, (_, asn) in PEERS.items():
            lines += [f" neighbor {address} remote-as {asn}", f" neighbor {address} passive"]
            lines.append(f" neighbor {address} timers 3 9")
        for family, prefixes in (("ipv4", (KEEP4, GONE4)), ("ipv6", (KEEP6, GONE6))):
            lines.append(f" address-family {family} unicast")
            lines += [f"  network {prefix} route-map MH" for prefix in prefixes]
            lines += [f"  neighbor {address} activate" for address in PEERS]
            lines.append(" exit-address-family")
        conf = self.dir / "frr.conf"
        conf.write_text("\n".join(lines) + "\n")
        subprocess.run(["chown", "-R", "frr:frr", str(self.dir)], check=True)
        rundir = pathlib.Path("/var/run/frr") / self.r
        rundir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "frr:frr", str(rundir)], check=True)
        common = ["-N", self.r, "-f", str(conf), "-d"]
        sh("/usr/lib/frr/zebra", *common, "-u", "frr", "-g", "frr", "-i", str(rundir / "zebra.pid"), ns=self.r)
        self.pidfile(rundir / "zebra.pid")
        sh("/usr/lib/frr/bgpd", *common, "-S", "-i", str(rundir / "bgpd.pid"), ns=self.r)
        self.pidfile(rundir / "bgpd.pid")
        wait_for(lambda: self.vtysh("show bgp summary"), timeout=10, what="FRR vty")

    def established_frr(self) -> bool:
        import json

        peers = json.loads(self.vtysh("show bgp neighbors json"))
        return all(peers.get(a, {}).get("bgpState") == "Established" for a in PEERS)

    def withdraw_frr(self) -> None:
        conf = ["configure terminal", f"router bgp {ROUTER_ASN}"]
        self.vtysh(*conf, "address-family ipv4 unicast", f"no network {GONE4}")
        self.vtysh(*conf, "address-family ipv6 unicast", f"no network {GONE6}")

    def refresh_frr(self) -> None:
        self.vtysh("clear bgp ipv4 unicast * soft in", "clear bgp ipv6 unicast * soft in")

    def shutdown_frr(self) -> None:
        lines = [f"neighbor {a} shutdown message {SHUTDOWN_MESSAGE}" for a in PEERS]
        self.vtysh("configure terminal", f"router bgp {ROUTER_ASN}", *lines)

    # -- BIRD 2 ---------------------------------------------------------------------------------------------

    def birdc(self, command: str) -> str:
        return sh("birdc", "-s", str(self.dir / "bird.ctl"), *command.split(" "), ns=self.r)

    def _start_bird(self) -> None:
        done = subprocess.run(["bird", "--version"], capture_output=True, text=True, timeout=10, check=False)
        self.version = "BIRD " + (done.stdout + done.stderr).split()[-1]  # "BIRD version 2.0.12" on stderr
        community = " ".join(f"bgp_community.add(({a},{b}));" for a, b in COMMUNITIES)
        parts = [
            f"router id {ROUTER4};",
            "protocol device {}",
            f"protocol static s4 {{ ipv4; route {KEEP4} blackhole; }}",
            f"protocol static s4gone {{ ipv4; route {GONE4} blackhole; }}",
            f"protocol static s6 {{ ipv6; route {KEEP6} blackhole; }}",
            f"protocol static s6gone {{ ipv6; route {GONE6} blackhole; }}",
            f"filter mh {{ {community} bgp_large_community.add(({LARGE[0]},{LARGE[1]},{LARGE[2]}));"
            f" bgp_local_pref = {LOCAL_PREF}; bgp_med = {MED}; accept; }}",
        ]
        for i, (address, (_, asn)) in enumerate(PEERS.items()):
            parts.append(
                f"protocol bgp peer{i} {{ local {ROUTER4} as {ROUTER_ASN}; neighbor {address} as {asn};"
                " passive on; hold time 9; keepalive time 3;"
                " ipv4 { import none; export filter mh; next hop self; };"
                f" ipv6 {{ import none; export filter mh; next hop address {ROUTER6}; }}; }}"
            )
        conf = self.dir / "bird.conf"
        conf.write_text("\n".join(parts) + "\n")
        pid = self.dir / "bird.pid"
        sh("bird", "-c", str(conf), "-s", str(self.dir / "bird.ctl"), "-P", str(pid), ns=self.r)
        self.pidfile(pid)
        wait_for(lambda: self.birdc("show status"), timeout=10, what="BIRD control socket")

    def established_bird(self) -> bool:
        out = self.birdc("show protocols")
        return all(f"peer{i}" in out and "Established" in out.split(f"peer{i}")[1].split("\n")[0] for i in (0, 1))

    def withdraw_bird(self) -> None:
        self.birdc("disable s4gone")
        self.birdc("disable s6gone")

    def refresh_bird(self) -> None:
        self.birdc("reload in peer0")
        self.birdc("reload in peer1")

    def shutdown_bird(self) -> None:
        for i in (0, 1):
            sh("birdc", "-s", str(self.dir / "bird.ctl"), "disable", f"peer{i}", f'"{SHUTDOWN_MESSAGE}"', ns=self.r)

    # -- GoBGP ----------------------------------------------------------------------------------------------

    def gobgp(self, *args: str) -> str:
        return sh("gobgp", *args, ns=self.r)

    def _start_gobgp(self) -> None:
        self.version = "GoBGP " + sh("gobgpd", "--version").split()[-1]
        parts = [
            "[global.config]",
            f"  as = {ROUTER_ASN}",
            f'  router-id = "{ROUTER4}"',
            "  port = 179",
        ]
        for address, (_, asn) in PEERS.items():
            parts += [
                "[[neighbors]]",
                "  [neighbors.config]",
                f'    neighbor-address = "{address}"',
                f"    peer-as = {asn}",
                "  [neighbors.timers.config]",
                "    hold-time = 9",
                "    keepalive-interval = 3",
                "  [neighbors.transport.config]",
                "    passive-mode = true",
                "  [neighbors.graceful-restart.config]",
                "    enabled = true",
                "    helper-only = true",
            ]
            for family in ("ipv4-unicast", "ipv6-unicast"):
                parts += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]"]
                parts += [f'      afi-safi-name = "{family}"', "    [neighbors.afi-safis.mp-graceful-restart.config]"]
                parts.append("      enabled = true")
        conf = self.dir / "gobgpd.toml"
        conf.write_text("\n".join(parts) + "\n")
        cmd = ["gobgpd", "-f", str(conf), "-t", "toml", "--api-hosts", "127.0.0.1:50051"]
        self.spawn("gobgpd", cmd, ns=self.r)
        wait_for(lambda: self.gobgp("neighbor"), timeout=10, what="gobgpd API")
        attributes = ["origin", "igp", "med", str(MED), "local-pref", str(LOCAL_PREF)]
        attributes += ["community", ",".join(f"{a}:{b}" for a, b in COMMUNITIES)]
        attributes += ["large-community", "{}:{}:{}".format(*LARGE)]
        for family, prefix, hop in (("ipv4", KEEP4, ROUTER4), ("ipv4", GONE4, ROUTER4)):
            self.gobgp("global", "rib", "add", "-a", family, prefix, "nexthop", hop, *attributes)
        for prefix in (KEEP6, GONE6):
            self.gobgp("global", "rib", "add", "-a", "ipv6", prefix, "nexthop", ROUTER6, *attributes)

    def established_gobgp(self) -> bool:
        out = self.gobgp("neighbor")
        return all(any(a in line and "Establ" in line for line in out.splitlines()) for a in PEERS)

    def withdraw_gobgp(self) -> None:
        self.gobgp("global", "rib", "del", "-a", "ipv4", GONE4)
        self.gobgp("global", "rib", "del", "-a", "ipv6", GONE6)

    def refresh_gobgp(self) -> None:
        # GoBGP keeps an Adj-RIB-In and re-evaluates it locally on soft reset in: it sends no ROUTE-REFRESH.
        for address in PEERS:
            self.gobgp("neighbor", address, "softresetin", "-a", "ipv4")
            self.gobgp("neighbor", address, "softresetin", "-a", "ipv6")

    def shutdown_gobgp(self) -> None:
        for address in PEERS:
            self.gobgp("neighbor", address, "shutdown", "--reason", SHUTDOWN_MESSAGE)

    # -- the script -----------------------------------------------------------------------------------------

    def record(self) -> None:
        step = getattr
        wait_for(step(self, f"established_{self.router}"), timeout=60, what="both sessions Established")
        time.sleep(4)  # the initial UPDATEs, End-of-RIB and a few KEEPALIVEs
        step(self, f"withdraw_{self.router}")()
        time.sleep(3)
        step(self, f"refresh_{self.router}")()
        time.sleep(3)
        step(self, f"shutdown_{self.router}")()
        time.sleep(3)
        self.stop_tcpdump()


# -- pcap -> hex files -----------------------------------------------------------------------------------------


def classify(message: codec.Message) -> str:
    if isinstance(message, open_message.Open):
        return "open"
    if isinstance(message, simple.Keepalive):
        return "keepalive"
    if isinstance(message, simple.RouteRefresh):
        return f"route-refresh-{'ipv6' if message.afi == nlri.Afi.IPV6 else 'ipv4'}"
    if isinstance(message, simple.Notification):
        return "notification-cease" if message.code == 6 else f"notification-{message.code}-{message.subcode}"
    assert isinstance(message, update.Update)
    a = message.attributes
    if message.is_end_of_rib:
        return (
            "end-of-rib-ipv6" if a.mp_unreach is not None and a.mp_unreach.afi == nlri.Afi.IPV6 else "end-of-rib-ipv4"
        )
    if message.nlri:
        return "update-ipv4"
    if a.mp_reach is not None:
        return f"update-{'ipv6' if a.mp_reach.afi == nlri.Afi.IPV6 else 'ipv4-mp'}"
    if message.withdrawn:
        return "withdraw-ipv4"
    if a.mp_unreach is not None:
        return f"withdraw-{'ipv6' if a.mp_unreach.afi == nlri.Afi.IPV6 else 'ipv4-mp'}"
    return "update-other"


TOLD = (
    f"told to originate {KEEP4} {GONE4} {KEEP6} {GONE6} with communities "
    + " ".join(f"{a}:{b}" for a, b in COMMUNITIES)
    + ", large community {}:{}:{}".format(*LARGE)
    + f", MED {MED}, LOCAL_PREF {LOCAL_PREF}; then to withdraw {GONE4} and {GONE6}, soft-reset in"
    + f' (ROUTE-REFRESH) and shut the neighbour down with "{SHUTDOWN_MESSAGE}"'
)


def hex_text(wire: bytes, comments: list[str]) -> str:
    lines = [f"# {c}" for c in comments]
    lines.append(f"{wire[:16].hex()} {wire[16:18].hex()} {wire[18:19].hex()}   # marker, length, type")
    body = wire[19:]
    lines += [body[i : i + 16].hex(" ") for i in range(0, len(body), 16)]
    return "\n".join(lines) + "\n"


def extract(router: str, version: str, pcap: bytes, out: pathlib.Path) -> list[str]:
    """Write the first message of each kind the router sent on each session; returns the file names."""
    written: list[str] = []
    today = datetime.date.today().isoformat()
    for stream in tcp_streams(pcap):
        if stream.src[0] != ROUTER4 or stream.dst[0] not in PEERS:
            continue
        suffix, asn = PEERS[stream.dst[0]]
        session = "eBGP" if suffix else "iBGP"
        framer = header.Framer()
        seen: set[bytes] = set()
        for raw in framer.feed(stream.payload()):
            wire = header.encode(raw.type, raw.body)
            try:
                what = classify(codec.decode(raw, four_octet_as=True))
            except Exception as exc:  # a decoder bug found by a real capture: keep the bytes
                print(f"{router}: {raw.type.name} does not decode: {exc!r}", file=sys.stderr)
                what = f"undecodable-{raw.type.name.lower()}"
            name = f"{router}-{what}{suffix}.hex"
            if name in written:
                # A router may split one announcement over several UPDATEs (GoBGP sends one MP_REACH prefix per
                # message): keep up to two more distinct ones as <what>-2, <what>-3.
                if not what.startswith(("update", "withdraw")) or wire in seen:
                    continue
                name = next((n for i in (2, 3) if (n := f"{router}-{what}-{i}{suffix}.hex") not in written), "")
                if not name:
                    continue
            seen.add(wire)
            comments = [
                f"Recorded from {version} with tests/linux/bgp_capture.py on {today} (tcpdump -w, TCP reassembly).",
                f"Sent by the router (AS {ROUTER_ASN}, {ROUTER4}) to a recording peer {stream.dst[0]} of AS {asn}"
                f" ({session}); both OPENs carry the 4-octet AS capability.",
                f"The router was {TOLD}.",
            ]
            (out / name).write_text(hex_text(wire, comments))
            written.append(name)
    return written


def record(router: str, out: pathlib.Path, pcap_dir: pathlib.Path | None) -> list[str]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"mh-cap-{router}-"))
    os.chmod(workdir, 0o755)
    lab = Lab(router, workdir)
    try:
        lab.setup()
        lab.record()
        pcap = lab.pcap.read_bytes()
        if pcap_dir is not None:
            shutil.copy(lab.pcap, pcap_dir / f"{router}.pcap")
    finally:
        lab.close()
        for log in sorted(workdir.glob("*.log")):
            text = log.read_text(errors="replace").strip()
            if text and "tcpdump" not in log.name:
                print(f"--- {log.name}\n{text[-1500:]}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    return extract(router, lab.version, pcap, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    peer = sub.add_parser("peer", help="(internal) the recording peer run inside the peer namespace")
    peer.add_argument("--local", required=True)
    peer.add_argument("--router", required=True)
    peer.add_argument("--asn", required=True, type=int)
    peer.add_argument("--lifetime", type=float, default=120)
    rec = sub.add_parser("record", help="record the routers (default)")
    rec.add_argument("routers", nargs="*", help="frr, bird, gobgp (default: all three)")
    rec.add_argument("--out", type=pathlib.Path, default=OUT)
    rec.add_argument("--pcap-dir", type=pathlib.Path, help="also keep each router's pcap here")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("peer", "record", "-h", "--help"):
        argv = ["record", *argv]
    args = parser.parse_args(argv)
    if args.command == "peer":
        return run_peer(local=args.local, router=args.router, asn=args.asn, lifetime=args.lifetime)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, tcpdump)")
    routers = args.routers or ["frr", "bird", "gobgp"]
    if set(routers) - {"frr", "bird", "gobgp"}:
        parser.error(f"unknown router in {routers}")
    args.out.mkdir(parents=True, exist_ok=True)
    for router in routers:
        written = record(router, args.out, args.pcap_dir)
        print(f"{router}: {' '.join(sorted(written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
