"""`metalhorn up --netns`: one network namespace per node on a bridge, so L2 and BGP announcements work for real.

    root namespace       bridge mh-up-br   198.18.0.1/24, 2001:db8::1/64   (the manager listens here)
    mh-up-node-1         eth0              198.18.0.11/24, 2001:db8::11/64  (agent, its replicas and engines)
    mh-up-node-2         eth0              198.18.0.12/24, 2001:db8::12/64
    ...

Every agent runs with ``ip netns exec mh-up-<node>`` (its replica and engine processes inherit the namespace),
listens on its own address and answers ARP/NDP on its ``eth0``. Other namespaces (a client, a router) can join
the bridge to look at the cluster the way a LAN would. Forwarding is on inside the node namespaces, so the
owner of a VIP can DNAT to an endpoint on another node. Only 198.18.0.0/24 and 2001:db8::/64 are used.

:meth:`Network.teardown` deletes the namespaces (which takes their veths and nft tables with them) and the
bridge. A previous run that died without tearing down is cleaned at the next set-up: names under ``mh-up-``
belong to this command.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import subprocess

from metalhorn.common import errors
from metalhorn.common.logs import kv

log = logging.getLogger(__name__)

BRIDGE = "mh-up-br"
PREFIX = "mh-up-"
MANAGER_V4 = "198.18.0.1"
MANAGER_V6 = "2001:db8::1"
MAX_NODES = 200  # 198.18.0.11 .. 198.18.0.210


@dataclasses.dataclass(frozen=True)
class NodeNet:
    node: str
    namespace: str
    veth: str  # the bridge-side end, in the root namespace
    ip4: str
    ip6: str


def node_net(node: str, index: int) -> NodeNet:
    """Addresses of the index-th node (1-based); names fit the 15-byte interface limit."""
    if not 1 <= index <= MAX_NODES:
        raise errors.InvalidArgument(f"--netns supports 1 to {MAX_NODES} nodes, not {index}")
    return NodeNet(
        node=node,
        namespace=f"{PREFIX}{node}",
        veth=f"mhu{index}",
        ip4=str(ipaddress.IPv4Address("198.18.0.10") + index),
        ip6=f"2001:db8::{10 + index}",  # reads like the IPv4 address
    )


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20, check=False)
    except FileNotFoundError as exc:
        raise errors.NotSupported("--netns needs iproute2 (`ip`)") from exc
    if check and done.returncode != 0:
        raise errors.Internal(f"ip {' '.join(argv)} failed: {done.stderr.strip()}")
    return done


class Network:
    def __init__(self, nodes: list[str]) -> None:
        self.nodes = [node_net(name, i) for i, name in enumerate(nodes, start=1)]
        self._created: list[str] = []

    def by_node(self, node: str) -> NodeNet:
        return next(n for n in self.nodes if n.node == node)

    def wrap(self, node: str, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside ``node``'s namespace."""
        return ["ip", "netns", "exec", self.by_node(node).namespace, *argv]

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise errors.InvalidArgument("--netns needs root (network namespaces, bridge, veth)")
        self.teardown(stale=True)
        try:
            _ip("link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0", "nf_call_iptables", "0")
            self._created.append("bridge")
            _ip("addr", "add", f"{MANAGER_V4}/24", "dev", BRIDGE)
            _ip("-6", "addr", "add", f"{MANAGER_V6}/64", "dev", BRIDGE, "nodad")
            _ip("link", "set", BRIDGE, "up")
            for n in self.nodes:
                _ip("netns", "add", n.namespace)
                self._created.append(n.namespace)
                _ip("link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.namespace)
                _ip("link", "set", n.veth, "master", BRIDGE, "up")
                ns = ("-n", n.namespace)
                for setting in (
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ):
                    _ip("netns", "exec", n.namespace, "sysctl", "-qw", setting)
                _ip(*ns, "link", "set", "lo", "up")
                _ip(*ns, "link", "set", "eth0", "up")
                _ip(*ns, "addr", "add", f"{n.ip4}/24", "dev", "eth0")
                _ip(*ns, "-6", "addr", "add", f"{n.ip6}/64", "dev", "eth0", "nodad")
        except BaseException:
            self.teardown()
            raise
        log.info("netns cluster network up %s", kv(bridge=BRIDGE, nodes=len(self.nodes), manager=MANAGER_V4))

    def teardown(self, *, stale: bool = False) -> None:
        """Delete our namespaces and the bridge; ``stale``: also those a crashed earlier run left behind."""
        names = {n.namespace for n in self.nodes}
        if stale:
            listed = _ip("netns", "list", check=False).stdout.split("\n")
            names |= {line.split()[0] for line in listed if line.startswith(PREFIX) and line.split()}
            busy = sorted(name for name in names if _ip("netns", "pids", name, check=False).stdout.strip())
            if busy:
                raise errors.AlreadyExists(
                    f"network namespace {busy[0]} has running processes: another `metalhorn up --netns` is "
                    "running here; stop it first (one --netns cluster per machine)"
                )
        elif not self._created:
            return
        for name in sorted(names):
            _ip("netns", "del", name, check=False)
        _ip("link", "del", BRIDGE, check=False)
        self._created.clear()
