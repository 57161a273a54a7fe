"""Issue 8 through the product: `metalhorn up --netns --nodes 3` peers with FRR in a router namespace.

`metalhorn apply -f` of a BGPPeer, a pool, a BGPAdvertisement (communities, large community, localPref) and a
Service: every agent opens a session (iBGP) and announces the service's /32 and /128, so FRR learns each VIP
from three nodes and installs three ECMP next hops in its kernel; `lb peers` shows Established and
`lb services` the peers; HTTP from the router to VIP:80 is DNATed by whichever node ECMP picks; `metalhorn
delete -f` of the Service withdraws the routes. BIRD and GoBGP stay covered by the standalone interop tests
(test_bgp_interop.py). Every wait is bounded.
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
from collections.abc import Iterator
from typing import Any

import pytest

from tests.linux import uplab

ROUTER4, ROUTER6 = "198.18.0.254", "2001:db8::254"
ASN = 64512
PEER = """
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor}
spec: {myASN: 64512, peerASN: 64512, peerAddress: 198.18.0.254, holdTime: 3s, keepaliveTime: 1s, connectTime: 1s}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: routed}
spec: {addresses: [198.19.0.0/24, "2001:db8:100::/120"]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: routed}
spec:
  ipAddressPools: [routed]
  communities: ["64512:100", "large:64512:7:8"]
  localPref: 250
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]
endpoints: ["198.18.0.11:8080", "198.18.0.12:8080", "[2001:db8::11]:8080", "[2001:db8::12]:8080"]
"""


class Frr:
    """zebra + bgpd in the router namespace, passive towards the three nodes, ECMP over up to 8 paths."""

    def __init__(self, cluster: uplab.Cluster, ns: str) -> None:
        self.ns = ns
        self.dir = cluster.dir / "frr"
        self.rundir = pathlib.Path("/var/run/frr") / ns
        self.pids: list[int] = []

    def start(self) -> None:
        self.dir.mkdir()
        lines = [
            "frr defaults datacenter",
            "hostname mh-up-router",
            "ip forwarding",
            "ipv6 forwarding",
            f"router bgp {ASN}",
            f" bgp router-id {ROUTER4}",
            " no bgp ebgp-requires-policy",
            " no bgp default ipv4-unicast",
            " bgp bestpath as-path multipath-relax",
        ]
        nodes = [uplab.node_ip(n) for n in uplab.NODES]
        for address in nodes:
            lines += [
                f" neighbor {address} remote-as {ASN}",
                f" neighbor {address} timers 1 3",
                f" neighbor {address} timers connect 1",
                f" neighbor {address} passive",
            ]
        for family in ("ipv4", "ipv6"):
            lines += [f" address-family {family} unicast", "  maximum-paths 8", "  maximum-paths ibgp 8"]
            lines += [f"  neighbor {address} activate" for address in nodes]
            lines.append(" exit-address-family")
        conf = self.dir / "frr.conf"
        conf.write_text("\n".join(lines) + "\n")
        os.chmod(self.dir.parent, 0o755)
        subprocess.run(["chown", "-R", "frr:frr", str(self.dir)], check=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "frr:frr", str(self.rundir)], check=True)
        common = ["-N", self.ns, "-f", str(conf), "-d"]
        zebra = ["/usr/lib/frr/zebra", *common, "-u", "frr", "-g", "frr", "-i", str(self.rundir / "zebra.pid")]
        uplab.sh("ip", "netns", "exec", self.ns, *zebra)
        self._pid(self.rundir / "zebra.pid")
        bgpd = ["/usr/lib/frr/bgpd", *common, "-S", "-i", str(self.rundir / "bgpd.pid")]
        uplab.sh("ip", "netns", "exec", self.ns, *bgpd)
        self._pid(self.rundir / "bgpd.pid")
        uplab.wait_for(lambda: self.vtysh("show bgp summary json"), timeout=15, what="FRR's vty")

    def _pid(self, path: pathlib.Path) -> None:
        self.pids.append(uplab.wait_for(lambda: int(path.read_text().strip()), timeout=10, what=f"{path}"))

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def vtysh(self, command: str) -> Any:
        out = uplab.sh("ip", "netns", "exec", self.ns, "vtysh", "--vty_socket", str(self.rundir), "-c", command)
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def established(self) -> set[str]:
        return {a for a, p in self.vtysh("show bgp neighbors json").items() if p.get("bgpState") == "Established"}

    def paths(self, prefix: str) -> list[dict[str, Any]]:
        family = "ipv6" if ":" in prefix else "ipv4"
        out = []
        for path in self.vtysh(f"show bgp {family} unicast {prefix} json").get("paths", []):
            hops = [h["ip"] for h in path.get("nexthops", []) if h.get("scope", "global") == "global"]
            out.append(
                {
                    "next_hop": hops[0] if hops else None,
                    "communities": sorted(path.get("community", {}).get("string", "").split()),
                    "large": sorted(path.get("largeCommunity", {}).get("string", "").split()),
                    "local_pref": path.get("locPrf", path.get("localpref")),
                }
            )
        return out

    def kernel_next_hops(self, prefix: str) -> set[str]:
        family = "-6" if ":" in prefix else "-4"
        out = uplab.sh("ip", "-n", self.ns, family, "-j", "route", "show", prefix).stdout
        hops: set[str] = set()
        for route in json.loads(out or "[]"):
            if "gateway" in route:
                hops.add(route["gateway"])
            hops.update(h["gateway"] for h in route.get("nexthops", []) if "gateway" in h)
        return hops


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[uplab.Cluster, Frr]]:
    missing = [t for t in ("vtysh", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra", "nft", "curl") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {missing}: scripts/test installs frr, nftables and curl")
    with uplab.Cluster("bgp") as cluster:
        ns = cluster.add_host("router", ROUTER4, ROUTER6)
        for setting in ("net.ipv4.fib_multipath_hash_policy=1", "net.ipv6.fib_multipath_hash_policy=1"):
            uplab.sh("ip", "netns", "exec", ns, "sysctl", "-qw", setting)
        frr = Frr(cluster, ns)
        try:
            frr.start()
            for node in ("node-1", "node-2"):
                cluster.start_backend(node)
            cluster.apply(PEER + "---\n" + SERVICE)
            yield cluster, frr
        finally:
            frr.stop()


def vips(cluster: uplab.Cluster) -> tuple[str, str]:
    ingress = uplab.wait_for(
        lambda: cluster.service("shop/api")["status"].get("ingress"), timeout=20, what="the service's IPs"
    )
    return next(ip for ip in ingress if ":" not in ip), next(ip for ip in ingress if ":" in ip)


def test_three_nodes_establish_and_lb_peers_says_so(lab: tuple[uplab.Cluster, Frr]) -> None:
    cluster, frr = lab
    nodes = {uplab.node_ip(n) for n in uplab.NODES}
    uplab.wait_for(lambda: nodes <= frr.established(), timeout=60, what="three Established sessions in FRR")

    def peers_established() -> bool:
        table = cluster.cli("lb", "peers")
        return all(re.search(rf"^{n}\s+tor\s+198\.18\.0\.254:179\s+Established\s", table, re.M) for n in uplab.NODES)

    uplab.wait_for(peers_established, timeout=15, what="lb peers to show three Established sessions")
    metrics = cluster.agent_metrics("node-1")
    assert re.search(r'^metalhorn_bgp_session_established\{node="node-1",peer="tor"\} 1$', metrics, re.M), metrics


def test_frr_learns_each_vip_from_three_nodes_as_ecmp_with_the_attributes(lab: tuple[uplab.Cluster, Frr]) -> None:
    cluster, frr = lab
    vip4, vip6 = vips(cluster)
    for vip, hop in ((f"{vip4}/32", uplab.node_ip), (f"{vip6}/128", uplab.node_ip6)):
        want = {hop(n) for n in uplab.NODES}
        uplab.wait_for(lambda v=vip, w=want: {p["next_hop"] for p in frr.paths(v)} == w, timeout=30, what=f"{vip}")
        for path in frr.paths(vip):
            assert path["communities"] == ["64512:100"] and path["large"] == ["64512:7:8"], path
            assert path["local_pref"] == 250, path
        uplab.wait_for(lambda v=vip, w=want: frr.kernel_next_hops(v) == w, timeout=15, what=f"ECMP route {vip}")
    uplab.wait_for(
        lambda: cluster.announcers("shop/api", "bgp") == list(uplab.NODES), timeout=15, what="lb services BGP peers"
    )
    table = cluster.cli("lb", "services")
    assert all(f"{n}/tor" in table for n in uplab.NODES), table


def test_http_from_the_router_reaches_the_backends_through_any_node(lab: tuple[uplab.Cluster, Frr]) -> None:
    cluster, frr = lab
    vip4, vip6 = vips(cluster)
    uplab.wait_for(lambda: len(frr.kernel_next_hops(f"{vip4}/32")) == 3, timeout=30, what="ECMP route")

    def get(vip: str) -> str | None:
        host = f"[{vip}]" if ":" in vip else vip
        r = uplab.sh("ip", "netns", "exec", frr.ns, "curl", "-s", "-m", "2", f"http://{host}/", check=False)
        return r.stdout if r.returncode == 0 else None

    uplab.wait_for(lambda: get(vip4) in {"node-1", "node-2"}, timeout=20, what=f"HTTP to {vip4}")
    assert {get(vip4) for _ in range(6)} <= {"node-1", "node-2"}
    uplab.wait_for(lambda: get(vip6) in {"node-1", "node-2"}, timeout=20, what=f"HTTP to [{vip6}]")


def test_sigkill_of_an_agent_drops_its_next_hop_after_the_hold_time(lab: tuple[uplab.Cluster, Frr]) -> None:
    cluster, frr = lab
    vip4, _ = vips(cluster)
    uplab.wait_for(lambda: len(frr.kernel_next_hops(f"{vip4}/32")) == 3, timeout=30, what="three next hops")
    os.kill(cluster.agent_pid("node-3"), signal.SIGKILL)
    rest = {uplab.node_ip("node-1"), uplab.node_ip("node-2")}
    uplab.wait_for(lambda: frr.kernel_next_hops(f"{vip4}/32") == rest, timeout=20, what="node-3's next hop gone")
    uplab.wait_for(
        lambda: cluster.announcers("shop/api", "bgp") == ["node-1", "node-2"], timeout=20, what="lb services"
    )


def test_delete_of_the_service_withdraws_the_routes(lab: tuple[uplab.Cluster, Frr]) -> None:
    cluster, frr = lab
    vip4, vip6 = vips(cluster)
    uplab.wait_for(lambda: frr.paths(f"{vip4}/32"), timeout=30, what="paths before the delete")
    cluster.apply(SERVICE, delete=True)
    for vip in (f"{vip4}/32", f"{vip6}/128"):
        uplab.wait_for(lambda v=vip: not frr.paths(v), timeout=20, what=f"{vip} withdrawn from FRR's table")
        uplab.wait_for(lambda v=vip: not frr.kernel_next_hops(v), timeout=10, what=f"{vip} gone from the kernel")
    assert frr.established() >= {uplab.node_ip("node-1"), uplab.node_ip("node-2")}  # the sessions stay up
