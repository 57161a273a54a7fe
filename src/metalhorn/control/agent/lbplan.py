"""What one node's load-balancer runtime must do, computed from the manager's answers (pure).

The agent reads three lists every second -- ``GET /v1/lb/config`` (MetalLB documents), ``GET /v1/lb/services``
(records with ``status.ingress`` and ``status.pool``) and ``GET /v1/nodes`` -- and :func:`plan` turns them into a
:class:`Plan`: the layer-2 balancers (IPs with the L2Advertisements covering each), the VIPs for the BGP speaker,
the balancers that only BGP serves (delivery still has to DNAT them), the election's candidate nodes and the
membership peers. The asyncio shell (lb.py) hands each part to its component as desired state; nothing here
does I/O, so the whole mapping is tested in microseconds.

Node labels (for nodeSelectors of L2Advertisements, BGPAdvertisements and BGPPeers): a tag ``key=value`` is the
label ``key: value``, a plain tag ``ssd`` is ``ssd: "true"``, the zone is ``topology.kubernetes.io/zone``, and
``kubernetes.io/hostname`` is the node's name (as MetalLB sees a Kubernetes node).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from metalhorn.lb import config, election, fields, model
from metalhorn.lb.bgp import routes

IPAddress = fields.IPAddress
ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclasses.dataclass(frozen=True)
class Balancer:
    """One service as the node's data path sees it: VIPs, TCP ports, endpoints (and, for L2, advertisements)."""

    name: str
    ips: tuple[IPAddress, ...]
    ports: tuple[int, ...]
    endpoints: tuple[model.Endpoint, ...]
    advertisements: tuple[tuple[IPAddress, tuple[config.L2Advertisement, ...]], ...] = ()

    @property
    def advertisement_map(self) -> dict[IPAddress, tuple[config.L2Advertisement, ...]]:
        return dict(self.advertisements)


@dataclasses.dataclass(frozen=True)
class Plan:
    l2: Mapping[str, Balancer]  # services with at least one IP covered by an L2Advertisement
    bgp_only: Mapping[str, Balancer]  # services announced only by BGP: delivery without the announcer
    vips: tuple[routes.Vip, ...]  # every assigned IP, for the speaker (routes.py decides per peer)
    nodes: tuple[election.Node, ...]  # election candidates, this node included
    peers: Mapping[str, tuple[str, int]]  # membership: node -> (address, probe port)
    labels: Mapping[str, str]  # this node's labels
    problems: tuple[str, ...] = ()  # services skipped, and why


def node_labels(name: str, *, tags: Iterable[str] = (), zone: str = "") -> dict[str, str]:
    labels: dict[str, str] = {}
    for tag in tags:
        key, sep, value = str(tag).partition("=")
        if key:
            labels[key] = value if sep else "true"
    if zone:
        labels[ZONE_LABEL] = zone
    return routes.node_labels(name, labels)


def _node_identity(record: Mapping[str, Any], fallback_tags: Sequence[str], fallback_zone: str) -> dict[str, str]:
    spec = record.get("spec") if isinstance(record.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    raw_tags = spec.get("tags")
    tags = [str(t) for t in raw_tags] if isinstance(raw_tags, list) and raw_tags else list(fallback_tags)
    raw_zone = spec.get("zone")
    zone = raw_zone if isinstance(raw_zone, str) and raw_zone else fallback_zone
    return node_labels(str(record.get("name")), tags=tags, zone=zone)


def _ips(status: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for text in status.get("ingress") or []:
        try:
            out.append(ipaddress.ip_address(str(text)))
        except ValueError:
            continue
    return tuple(sorted(set(out), key=lambda a: (a.version, int(a))))


def plan(
    *,
    node: str,
    lb: config.LbConfig,
    services: Iterable[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    interfaces: Sequence[str] = (),
    probe_port: int,
    tags: Sequence[str] = (),
    zone: str = "",
) -> Plan:
    """The node's whole wish; see the module docstring. Records that do not parse are skipped with a reason."""
    problems: list[str] = []
    ifaces = tuple(interfaces)
    candidates: list[election.Node] = []
    peers: dict[str, tuple[str, int]] = {}
    my_labels = node_labels(node, tags=tags, zone=zone)
    for record in nodes:
        name = str(record.get("name") or "")
        if not name:
            continue
        labels = _node_identity(record, tags if name == node else (), zone if name == node else "")
        if name == node:
            my_labels = labels
        candidates.append(election.Node(name, labels=tuple(sorted(labels.items())), interfaces=ifaces))
        status = record.get("status") if isinstance(record.get("status"), Mapping) else {}
        assert isinstance(status, Mapping)
        address = status.get("address")
        if isinstance(address, str) and address:
            peers[name] = (address, probe_port)
    if node not in {n.name for n in candidates}:
        candidates.append(election.Node(node, labels=tuple(sorted(my_labels.items())), interfaces=ifaces))

    l2: dict[str, Balancer] = {}
    bgp_only: dict[str, Balancer] = {}
    vips: list[routes.Vip] = []
    for record in services:
        name = str(record.get("name") or "")
        status = record.get("status") if isinstance(record.get("status"), Mapping) else {}
        spec = record.get("spec") if isinstance(record.get("spec"), Mapping) else {}
        assert isinstance(status, Mapping) and isinstance(spec, Mapping)
        if status.get("state") != "assigned":
            continue
        ips = _ips(status)
        pool = lb.pool(str(status.get("pool") or ""))
        if not ips or pool is None:
            continue
        try:
            service = model.parse_service(spec.get("document"))
        except fields.InvalidConfig as exc:
            problems.append(f"{name}: {exc.message}")
            continue
        ports = tuple(sorted({p.port for p in service.ports if p.protocol == "TCP"}))
        advs = tuple((ip, election.advertisements_for(lb, ip, service)) for ip in ips)
        balancer = Balancer(name, ips, ports, service.endpoints, tuple((ip, a) for ip, a in advs if a))
        if balancer.advertisements:
            l2[name] = balancer
        elif lb.bgp_advertisements_for(pool):
            bgp_only[name] = balancer
        for ip in ips:
            vips.append(routes.Vip(ip, pool.name, service=name, service_labels=service.labels))
    return Plan(
        l2=l2,
        bgp_only=bgp_only,
        vips=tuple(vips),
        nodes=tuple(sorted(candidates, key=lambda n: n.name)),
        peers=peers,
        labels=my_labels,
        problems=tuple(problems),
    )


def bgp_report(
    lb: config.LbConfig,
    *,
    labels: Mapping[str, str],
    vips: Iterable[routes.Vip],
    established: Iterable[str],
) -> dict[str, list[str]]:
    """service name -> the BGPPeers (Established now) that this node announces one of its VIPs to."""
    up = set(established)
    by_service: dict[str, list[routes.Vip]] = {}
    for vip in vips:
        by_service.setdefault(vip.service, []).append(vip)
    out: dict[str, list[str]] = {}
    for peer in lb.bgp_peers:
        if peer.meta.name not in up:
            continue
        for service, items in by_service.items():
            if routes.routes_for_peer(lb, peer, labels=labels, vips=items):
                out.setdefault(service, []).append(peer.meta.name)
    return {name: sorted(peers) for name, peers in sorted(out.items())}


def l2_report(balancers: Mapping[str, Balancer], owned: Iterable[IPAddress]) -> list[str]:
    """The services one of whose IPs this node answers for right now."""
    mine = set(owned)
    return sorted(name for name, b in balancers.items() if mine & set(b.ips))
