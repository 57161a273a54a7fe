"""Issue 7 through the product: `metalhorn up --netns --nodes 3`, `metalhorn apply -f`, a client on the bridge.

The agents (not the standalone `metalhorn l2 announce`) read the pool, the L2Advertisement and the Service from
the manager, elect an owner per VIP, answer ARP/NDP from it, DNAT VIP:80 to backends served in node namespaces,
and report the announcing node, which `metalhorn lb services` shows. Then the owner's agent is cut off by link
down and, separately, killed with SIGKILL: another node answers, sends gratuitous ARP, and the client's requests
recover without flushing its neighbour cache. Every wait is bounded; recovery is asserted, never its timing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.linux import uplab

CLIENT4, CLIENT6 = "198.18.0.2", "2001:db8::2"
SERVICE = "shop/web"
CONFIG = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan}
spec: {addresses: [198.18.0.200-198.18.0.210, "2001:db8::200/125"]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lan}
spec: {ipAddressPools: [lan], interfaces: [eth0]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]
endpoints: ["198.18.0.11:8080", "198.18.0.12:8080", "[2001:db8::11]:8080", "[2001:db8::12]:8080"]
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[uplab.Cluster]:
    missing = [t for t in ("arping", "ndisc6", "tcpdump", "curl", "nft") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {missing}: scripts/test installs arping, ndisc6, tcpdump, curl and nftables")
    with uplab.Cluster("l2") as c:
        c.add_host("client", CLIENT4, CLIENT6)
        for node in ("node-1", "node-2"):
            c.start_backend(node)
        c.apply(CONFIG)
        uplab.wait_for(lambda: c.announcers(SERVICE), timeout=30, what="an announcing node in lb services")
        yield c


def vips(c: uplab.Cluster) -> tuple[str, str]:
    ingress = c.service(SERVICE)["status"]["ingress"]
    return next(ip for ip in ingress if ":" not in ip), next(ip for ip in ingress if ":" in ip)


def client(c: uplab.Cluster, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return uplab.sh("ip", "netns", "exec", c.hosts["client"], *argv, check=False, timeout=timeout)


def arping(c: uplab.Cluster, vip: str, *, count: int = 3) -> list[str]:
    r = client(c, "arping", "-c", str(count), "-w", "1000000", "-i", "eth0", vip)
    return re.findall(r"bytes from ([0-9a-f:]{17})", r.stdout)


def ndisc(c: uplab.Cluster, vip: str) -> list[str]:
    r = client(c, "ndisc6", "-m", "-n", "-r", "2", "-w", "1000", vip, "eth0")
    return [m.lower() for m in re.findall(r"Target link-layer address: ([0-9A-Fa-f:]{17})", r.stdout)]


def http(c: uplab.Cluster, vip: str) -> str | None:
    host = f"[{vip}]" if ":" in vip else vip
    r = client(c, "curl", "-s", "-m", "2", f"http://{host}:80/", timeout=10)
    return r.stdout if r.returncode == 0 else None


def owner(c: uplab.Cluster, vip: str) -> str | None:
    macs = set(arping(c, vip, count=1))
    return c.node_of_mac(macs.pop()) if len(macs) == 1 else None


def recovers(c: uplab.Cluster, vip: str, *, in_a_row: int = 3, timeout: float = 30) -> None:
    """Requests to ``vip`` succeed ``in_a_row`` times running, within ``timeout``."""
    streak = [0]

    def ok() -> bool:
        streak[0] = streak[0] + 1 if http(c, vip) is not None else 0
        return streak[0] >= in_a_row

    uplab.wait_for(ok, timeout=timeout, what=f"{in_a_row} good requests in a row to {vip}", interval=0.05)


@contextlib.contextmanager
def capture(c: uplab.Cluster, name: str) -> Iterator[pathlib.Path]:
    path = c.dir / f"{name}.pcap"
    log = f"tcpdump-{name}.log"
    p = c.spawn(c.hosts["client"], "tcpdump", "-i", "eth0", "-U", "-n", "-w", str(path), "arp or icmp6", log=log)
    uplab.wait_for(lambda: "listening on" in (c.dir / log).read_text(), timeout=10, what="tcpdump")
    try:
        yield path
    finally:
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        c.stop(p)


def pcap_lines(path: pathlib.Path) -> list[str]:
    return uplab.sh("tcpdump", "-r", str(path), "-n", "-e", check=False).stdout.splitlines()


def garp_from(lines: list[str], mac: str, vip: str) -> bool:
    v = re.escape(vip)
    request = re.compile(rf"{mac} > ff:ff:ff:ff:ff:ff.*Request who-has {v} tell {v}")
    reply = re.compile(rf"{mac} > ff:ff:ff:ff:ff:ff.*Reply {v} is-at {mac}")
    return any(request.search(x) for x in lines) and any(reply.search(x) for x in lines)


# -- steady state ------------------------------------------------------------------------------------------------


def test_one_mac_answers_each_vip_and_lb_services_names_it(cluster: uplab.Cluster) -> None:
    vip4, vip6 = vips(cluster)
    macs = arping(cluster, vip4, count=4)
    assert len(macs) >= 3 and len(set(macs)) == 1, macs
    owner4 = cluster.node_of_mac(macs[0])
    client(cluster, "ip", "-6", "neigh", "flush", "dev", "eth0")
    macs6 = ndisc(cluster, vip6)
    assert macs6 and len(set(macs6)) == 1, macs6
    owner6 = cluster.node_of_mac(macs6[0])
    assert owner4 in cluster.nodes and owner6 in cluster.nodes
    uplab.wait_for(
        lambda: cluster.announcers(SERVICE) == sorted({owner4, owner6}),
        timeout=15,
        what=f"lb services to show {owner4} / {owner6}",
    )
    table = cluster.cli("lb", "services")
    assert re.search(rf"^shop/web\s+assigned\s+.*{owner4}", table, re.M), table


def test_steady_state_capture_shows_no_second_node_answering(cluster: uplab.Cluster) -> None:
    vip4, vip6 = vips(cluster)
    with capture(cluster, "steady") as pcap:
        arping(cluster, vip4, count=5)
        client(cluster, "ip", "-6", "neigh", "flush", "dev", "eth0")
        ndisc(cluster, vip6)
    lines = pcap_lines(pcap)
    answers = {m for x in lines for m in re.findall(rf"([0-9a-f:]{{17}}) > .*Reply {re.escape(vip4)} is-at", x)}
    nas = {m for x in lines for m in re.findall(rf"([0-9a-f:]{{17}}) > .*neighbor advertisement.*tgt is {vip6}", x)}
    assert len(answers) == 1 and len(nas) == 1, "\n".join(lines)


def test_http_to_the_vip_reaches_the_backends_and_survives_a_stopped_endpoint(cluster: uplab.Cluster) -> None:
    vip4, vip6 = vips(cluster)
    recovers(cluster, vip4)
    bodies = {http(cluster, vip4) for _ in range(6)}
    assert bodies == {"node-1", "node-2"}, bodies  # round robin over both endpoints, from whichever node owns it
    assert http(cluster, vip6) in {"node-1", "node-2"}
    backend = next(p for p in cluster.procs if "node-2" in p.args and "-c" in p.args)  # type: ignore[operator]
    cluster.stop(backend)
    try:
        recovers(cluster, vip4, in_a_row=8)  # the owner's health check takes node-2 out of rotation
        assert [http(cluster, vip4) for _ in range(6)] == ["node-1"] * 6
        recovers(cluster, vip6, in_a_row=3)
    finally:
        cluster.start_backend("node-2")
    metrics = "".join(cluster.agent_metrics(n) for n in cluster.nodes)
    failures = [float(v) for v in re.findall(r"^metalhorn_lb_health_check_failures_total\S* (\S+)$", metrics, re.M)]
    answered = [float(v) for v in re.findall(r"^metalhorn_lb_requests_answered_total\S* (\S+)$", metrics, re.M)]
    assert sum(failures) > 0 and sum(answered) > 0, metrics


# -- failover ----------------------------------------------------------------------------------------------------


def _failover(cluster: uplab.Cluster, fail: str) -> tuple[str, str]:
    vip4, vip6 = vips(cluster)
    old = uplab.wait_for(lambda: owner(cluster, vip4), timeout=20, what="a single owner")
    recovers(cluster, vip4)
    with capture(cluster, f"failover-{fail}") as pcap:
        if fail == "sigkill":
            os.kill(cluster.agent_pid(old), signal.SIGKILL)
        else:
            uplab.sh("ip", "-n", f"mh-up-{old}", "link", "set", "eth0", "down")
        new = uplab.wait_for(
            lambda: (o := owner(cluster, vip4)) not in (None, old) and o, timeout=20, what="another node answering"
        )
        recovers(cluster, vip4)  # the client's cache was not flushed: the gratuitous ARP moved it
        recovers(cluster, vip6)  # likewise the unsolicited NA (whichever node owns the IPv6 VIP now)
    lines = pcap_lines(pcap)
    assert garp_from(lines, cluster.mac(new), vip4), "\n".join(lines)
    uplab.wait_for(
        lambda: old not in cluster.announcers(SERVICE) and new in cluster.announcers(SERVICE),
        timeout=20,
        what=f"lb services to show {new} instead of {old}",
    )
    return old, new


def test_link_down_of_the_owner_moves_the_vip(cluster: uplab.Cluster) -> None:
    old, _ = _failover(cluster, "linkdown")
    uplab.sh("ip", "-n", f"mh-up-{old}", "link", "set", "eth0", "up")
    vip4, _ = vips(cluster)
    uplab.wait_for(lambda: owner(cluster, vip4), timeout=20, what="a single owner after the link came back")
    recovers(cluster, vip4)


def test_sigkill_of_the_owners_agent_moves_the_vip(cluster: uplab.Cluster) -> None:
    _, new = _failover(cluster, "sigkill")
    takeovers = re.findall(r"^metalhorn_lb_takeovers_total\S* (\S+)$", cluster.agent_metrics(new), re.M)
    assert takeovers and float(takeovers[0]) >= 1
