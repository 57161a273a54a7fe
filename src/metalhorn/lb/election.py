"""Which node announces each layer-2 IP: a pure function every agent evaluates on the same inputs.

There is no election protocol.  Each node ranks the candidates for an IP by ``sha256(node + "#" + ip)`` and the
first healthy, eligible node owns it (MetalLB's ``sortL2Candidates`` does the same with its memberlist view).
Agents that agree on membership agree on the owner, and the hash spreads IPs evenly over nodes; a node joining
takes over exactly the IPs for which it now ranks first, and a node leaving moves only the IPs it owned.

Eligibility follows MetalLB's L2Advertisement: a node is a candidate for an IP if at least one advertisement
that covers the IP's pool selects the node (no node selectors means every node) and, when that advertisement
names interfaces, the node has one of them.  The owner announces on the interfaces those advertisements allow;
an advertisement without ``interfaces`` allows every interface of the node.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterable, Mapping

from metalhorn.lb import config, fields, model

IPAddress = fields.IPAddress


@dataclasses.dataclass(frozen=True)
class Node:
    """A node as the election sees it: its name, its labels and the interfaces it can announce on."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    interfaces: tuple[str, ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """The owner of one IP and the interfaces it announces the IP on (sorted)."""

    ip: IPAddress
    node: str
    interfaces: tuple[str, ...]


def rank_key(node: str, ip: IPAddress) -> bytes:
    """The sort key of ``node`` for ``ip``; the smallest key wins.  Text form of the IP, as MetalLB hashes it."""
    return hashlib.sha256(f"{node}#{ip}".encode()).digest()


def candidates(ip: IPAddress, nodes: Iterable[str]) -> list[str]:
    """Every node in the order the election prefers it for ``ip``."""
    return sorted(nodes, key=lambda n: rank_key(n, ip))


def interfaces_for(node: Node, advertisements: Iterable[config.L2Advertisement]) -> tuple[str, ...] | None:
    """The interfaces ``node`` may announce on under ``advertisements``; None if it is not eligible at all."""
    allowed: set[str] = set()
    eligible = False
    for adv in advertisements:
        if adv.node_selectors and not fields.any_selector_matches(adv.node_selectors, node.label_map):
            continue
        names = node.interfaces if not adv.interfaces else tuple(i for i in adv.interfaces if i in node.interfaces)
        if adv.interfaces and not names:
            continue  # MetalLB: a node with none of the named interfaces cannot announce this IP
        eligible = True
        allowed.update(names)
    return tuple(sorted(allowed)) if eligible else None


def owner(
    ip: IPAddress,
    *,
    nodes: Iterable[Node],
    healthy: Collection[str],
    advertisements: Iterable[config.L2Advertisement],
) -> Assignment | None:
    """The node that announces ``ip``, or None when no healthy node is eligible."""
    advs = tuple(advertisements)
    best: tuple[bytes, Assignment] | None = None
    for node in nodes:
        if node.name not in healthy:
            continue
        ifaces = interfaces_for(node, advs)
        if ifaces is None:
            continue
        key = rank_key(node.name, ip)
        if best is None or key < best[0]:
            best = (key, Assignment(ip, node.name, ifaces))
    return best[1] if best else None


def assign(
    ips: Iterable[IPAddress],
    *,
    nodes: Iterable[Node],
    healthy: Collection[str],
    advertisements_for: Mapping[IPAddress, Iterable[config.L2Advertisement]],
) -> dict[IPAddress, Assignment]:
    """The owner of every IP that has one; IPs without an eligible healthy node are left out."""
    node_list = tuple(nodes)
    out: dict[IPAddress, Assignment] = {}
    for ip in ips:
        a = owner(ip, nodes=node_list, healthy=healthy, advertisements=advertisements_for.get(ip, ()))
        if a is not None:
            out[ip] = a
    return out


def advertisements_for(
    cfg: config.LbConfig, ip: IPAddress, service: model.Service | None = None
) -> tuple[config.L2Advertisement, ...]:
    """The L2Advertisements that cover ``ip``: those selecting the pool holding it (and the service, if given)."""
    pool = next((p for p in cfg.pools if any(ip in r for r in p.addresses)), None)
    if pool is None:
        return ()
    advs = cfg.l2_advertisements_for(pool)
    if service is not None:
        labels = service.label_map
        advs = tuple(
            a for a in advs if not a.service_selectors or fields.any_selector_matches(a.service_selectors, labels)
        )
    return advs


def owned_by(assignments: Mapping[IPAddress, Assignment], node: str) -> dict[IPAddress, tuple[str, ...]]:
    """The IPs ``node`` owns, each with its interfaces: what a node's responder must answer for."""
    return {ip: a.interfaces for ip, a in assignments.items() if a.node == node}


EVERYWHERE = config.L2Advertisement(meta=fields.Meta("L2Advertisement", config.DEFAULT_NAMESPACE, "everywhere"))
"""An advertisement with no selectors and no interfaces: every node, every interface (the standalone default)."""
