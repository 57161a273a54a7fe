"""A LoadBalancer Service as metalhorn sees it, parsed from a Kubernetes-shaped ``kind: Service`` document.

metalhorn runs without Kubernetes, so a Service carries what MetalLB would read from the API server: ports,
requested IPs (``spec.loadBalancerIP`` or the ``metallb.io/loadBalancerIPs`` annotation), the pool annotation,
the sharing key, the IP family policy, labels -- plus ``endpoints``, the backends (ip, port) that the announcing
node forwards to, which Kubernetes would take from EndpointSlices.  The parser resolves the IP families once
(SingleStack defaults to the family of a requested IP, else IPv4; dual stack to IPv4 then IPv6) so the allocator
never guesses.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Mapping
from typing import Any

from metalhorn.lb import fields

IPAddress = fields.IPAddress

ANNOTATION_ADDRESS_POOL = "metallb.io/address-pool"
ANNOTATION_LOADBALANCER_IPS = "metallb.io/loadBalancerIPs"
ANNOTATION_ALLOW_SHARED_IP = "metallb.io/allow-shared-ip"
DEFAULT_NAMESPACE = "default"
PROTOCOLS = ("TCP", "UDP", "SCTP")


class IPFamilyPolicy(enum.Enum):
    SINGLE_STACK = "SingleStack"
    PREFER_DUAL_STACK = "PreferDualStack"
    REQUIRE_DUAL_STACK = "RequireDualStack"


@dataclasses.dataclass(frozen=True, order=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int | None = None  # None: same as port


@dataclasses.dataclass(frozen=True, order=True)
class Endpoint:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()
    requested_ips: tuple[IPAddress, ...] = ()  # spec.loadBalancerIP or the loadBalancerIPs annotation
    address_pool: str = ""  # metallb.io/address-pool
    sharing_key: str = ""  # metallb.io/allow-shared-ip; "" never shares
    ip_family_policy: IPFamilyPolicy = IPFamilyPolicy.SINGLE_STACK
    ip_families: tuple[int, ...] = (4,)  # resolved: 4 and/or 6, primary first
    labels: tuple[tuple[str, str], ...] = ()
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def port_keys(self) -> frozenset[tuple[int, str]]:
        """What collides when two services share an IP: (port, protocol)."""
        return frozenset((p.port, p.protocol) for p in self.ports)

    def __str__(self) -> str:
        return self.key


_SPEC_FIELDS = (
    "type",
    "ports",
    "loadBalancerIP",
    "ipFamilyPolicy",
    "ipFamilies",
    # Kubernetes fields that mean nothing here but appear in real manifests; accepted and ignored.
    "selector",
    "clusterIP",
    "clusterIPs",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "sessionAffinity",
    "sessionAffinityConfig",
    "loadBalancerClass",
    "loadBalancerSourceRanges",
    "allocateLoadBalancerNodePorts",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "externalIPs",
    "trafficDistribution",
)
_PORT_FIELDS = ("port", "protocol", "name", "targetPort", "nodePort", "appProtocol")


def parse_service(doc: object) -> Service:
    """Validate one ``kind: Service`` document; raise fields.InvalidConfig listing every problem."""
    problems: list[fields.Problem] = []
    r = fields.Reader(problems, _describe(doc))
    d = r.fields(doc, "", ("apiVersion", "kind", "metadata", "spec", "status", "endpoints"), required=("metadata",))
    if r.string(d, "apiVersion", "") != "v1":
        r.bad("apiVersion", f"{d.get('apiVersion')!r} is wrong for Service: use v1")
    if r.string(d, "kind", "") != "Service":
        r.bad("kind", f"{d.get('kind')!r} is not Service")
    meta = fields.parse_meta(r, d, "Service", default_namespace=DEFAULT_NAMESPACE)
    r.obj = str(meta)
    raw_meta = d.get("metadata")
    raw_notes = raw_meta.get("annotations") if isinstance(raw_meta, dict) else None
    annotations: dict[str, Any] = raw_notes if isinstance(raw_notes, dict) else {}
    s = r.fields(d.get("spec"), "spec", _SPEC_FIELDS, required=("type",))
    if "type" in s and s["type"] != "LoadBalancer":
        r.bad("spec.type", f"{s['type']!r}: metalhorn serves only type LoadBalancer")

    ports = _ports(r, s)
    policy = _policy(r, s)
    families = _families(r, s)
    requested = _requested_ips(r, s, annotations)
    families = _resolve_families(r, policy, families, requested)
    pool = annotations.get(ANNOTATION_ADDRESS_POOL, "")
    sharing = annotations.get(ANNOTATION_ALLOW_SHARED_IP, "")
    endpoints = _endpoints(r, d)
    if problems:
        raise fields.InvalidConfig(problems)
    return Service(
        namespace=meta.namespace,
        name=meta.name,
        ports=ports,
        requested_ips=requested,
        address_pool=pool if isinstance(pool, str) else "",
        sharing_key=sharing if isinstance(sharing, str) else "",
        ip_family_policy=policy,
        ip_families=families,
        labels=meta.labels,
        endpoints=endpoints,
    )


def _describe(doc: object) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
        name, ns = doc["metadata"].get("name"), doc["metadata"].get("namespace")
        if isinstance(name, str):
            return f"Service {ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE}/{name}"
    return "Service"


def _ports(r: fields.Reader, s: Mapping[str, Any]) -> tuple[ServicePort, ...]:
    out: list[ServicePort] = []
    for p, item in r.items(s, "ports", "spec"):
        e = r.fields(item, p, _PORT_FIELDS, required=("port",))
        port = r.integer(e, "port", p, lo=1, hi=65535)
        protocol = r.string(e, "protocol", p, default="TCP")
        if protocol not in PROTOCOLS:
            r.bad(fields.join(p, "protocol"), f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
        target = e.get("targetPort")
        target_port: int | None = None
        if isinstance(target, int) and not isinstance(target, bool):
            target_port = r.integer(e, "targetPort", p, lo=1, hi=65535)
        elif target is not None and not isinstance(target, str):  # a named port is Kubernetes-only; ignored
            r.bad(fields.join(p, "targetPort"), "must be a port number")
        if port is None:
            continue
        sp = ServicePort(port, protocol, r.string(e, "name", p), target_port)
        if any((o.port, o.protocol) == (sp.port, sp.protocol) for o in out):
            r.bad(fields.join(p, "port"), f"{port}/{protocol} is listed twice")
        out.append(sp)
    return tuple(out)


def _policy(r: fields.Reader, s: Mapping[str, Any]) -> IPFamilyPolicy:
    text = r.string(s, "ipFamilyPolicy", "spec", default="SingleStack")
    try:
        return IPFamilyPolicy(text)
    except ValueError:
        r.bad("spec.ipFamilyPolicy", f"{text!r} is not SingleStack, PreferDualStack or RequireDualStack")
        return IPFamilyPolicy.SINGLE_STACK


def _families(r: fields.Reader, s: Mapping[str, Any]) -> tuple[int, ...]:
    out: list[int] = []
    for p, item in r.items(s, "ipFamilies", "spec"):
        # Case-insensitive: MetalLB's own documentation writes "ipv6".
        family = {"ipv4": 4, "ipv6": 6}.get(item.lower()) if isinstance(item, str) else None
        if family is None:
            r.bad(p, f"{item!r} is not IPv4 or IPv6")
        elif family in out:
            r.bad(p, f"IPv{family} is listed twice")
        else:
            out.append(family)
    return tuple(out)


def _requested_ips(r: fields.Reader, s: Mapping[str, Any], annotations: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    spec_ip = r.string(s, "loadBalancerIP", "spec")
    note = annotations.get(ANNOTATION_LOADBALANCER_IPS)
    where = f"metadata.annotations[{ANNOTATION_LOADBALANCER_IPS}]"
    if spec_ip and note:
        r.bad("spec.loadBalancerIP", f"cannot be set together with the {ANNOTATION_LOADBALANCER_IPS} annotation")
        return ()
    texts, path = ([spec_ip], "spec.loadBalancerIP") if spec_ip else ([], "")
    if isinstance(note, str) and note:
        texts, path = note.split(","), where
    out: list[IPAddress] = []
    for text in texts:
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            r.bad(path, f"{text.strip()!r} is not an IP address")
            continue
        if any(o.version == ip.version for o in out):
            r.bad(path, "at most one IPv4 and one IPv6 address may be requested")
            continue
        out.append(ip)
    return tuple(out)


def _resolve_families(
    r: fields.Reader, policy: IPFamilyPolicy, families: tuple[int, ...], requested: tuple[IPAddress, ...]
) -> tuple[int, ...]:
    wanted = tuple(ip.version for ip in requested)
    if policy is IPFamilyPolicy.SINGLE_STACK:
        if len(families) > 1:
            r.bad("spec.ipFamilies", "SingleStack takes one family")
        if len(wanted) > 1:
            r.bad("spec.loadBalancerIP", "SingleStack takes one requested IP")
        resolved = families[:1] or wanted[:1] or (4,)
    else:
        primary = families[:1] or wanted[:1] or (4,)
        resolved = (primary[0], 10 - primary[0])  # the other family
        if policy is IPFamilyPolicy.REQUIRE_DUAL_STACK and len(wanted) == 1:
            r.bad("spec.loadBalancerIP", "RequireDualStack needs one IPv4 and one IPv6 requested IP")
    for ip in requested:
        if ip.version not in resolved:
            r.bad("spec.ipFamilies", f"requested IP {ip} is IPv{ip.version}, but the service is IPv{resolved[0]}")
    return resolved


def _endpoints(r: fields.Reader, d: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """``endpoints: ["198.18.0.10:8080", "[2001:db8::10]:8080", {ip: ..., port: ...}]``."""
    out: list[Endpoint] = []
    for p, item in r.items(d, "endpoints", ""):
        if isinstance(item, str):
            host, sep, port_text = item.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not sep or not port_text.isdigit():
                r.bad(p, f"{item!r} is not IP:PORT")
                continue
            e: dict[str, Any] = {"ip": host, "port": int(port_text)}
        else:
            e = r.fields(item, p, ("ip", "port"), required=("ip", "port"))
        ip = r.ip(e, "ip", p)
        port = r.integer(e, "port", p, lo=1, hi=65535)
        if ip is not None and port is not None:
            out.append(Endpoint(ip, port))
    return tuple(out)
