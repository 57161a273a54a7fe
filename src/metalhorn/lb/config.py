"""MetalLB's configuration kinds, parsed once at the edge into one frozen, validated :class:`LbConfig`.

The CLI (``metalhorn apply -f``), the REST API and (later) a Kubernetes webhook all call :func:`parse`, so a
configuration is accepted or rejected the same way everywhere.  Parsing never stops at the first mistake: every
problem is collected and reported together in one :class:`InvalidConfig`, each naming the object
(``kind namespace/name``) and the field path, as a user needs to fix a file in one go.

Semantics follow MetalLB (metallb.io/v1beta1 and v1beta2): pools never overlap, an address range may be a CIDR or
``first-last``, an advertisement with neither ``ipAddressPools`` nor ``ipAddressPoolSelectors`` covers every pool,
a BGP aggregation length may not be shorter than a pool's own prefix, hold time is 0 or at least 3 s.  We are
stricter than MetalLB in three places, because a typo should fail loudly rather than silently do nothing: unknown
fields are errors, an advertisement naming a pool that does not exist is an error, and so is a peer naming a
BFD profile that does not exist.  We also accept any TCP port for ``peerPort`` (MetalLB caps it at 16384), so a
test peer can listen on a port the OS chose.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

from metalhorn.lb import fields

API_V1BETA1 = "metallb.io/v1beta1"
API_V1BETA2 = "metallb.io/v1beta2"
DEFAULT_NAMESPACE = "metallb-system"
MAX_ASN = 4294967295

InvalidConfig = fields.InvalidConfig
Problem = fields.Problem

IPAddress = fields.IPAddress
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# ---------------------------------------------------------------------------------------------------------------
# Addresses, durations, communities


@dataclasses.dataclass(frozen=True)
class AddressRange:
    """One ``spec.addresses`` entry: a CIDR or an inclusive ``first-last`` range."""

    text: str
    first: IPAddress
    last: IPAddress

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPAddress) and ip.version == self.version and int(self.first) <= int(ip) <= int(self.last)

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.summarize_address_range(self.first, self.last))

    def widest_prefix(self) -> int:
        """The shortest prefix length among the CIDRs that make up this range (MetalLB's lowestMask)."""
        return min(n.prefixlen for n in self.networks())


def parse_address_range(text: str) -> AddressRange:
    """Raise ValueError with a user-facing reason."""
    if "-" in text:
        a, _, b = text.partition("-")
        try:
            first = ipaddress.ip_address(a.strip())
        except ValueError:
            raise ValueError(f"{a.strip()!r} is not an IP address") from None
        try:
            last = ipaddress.ip_address(b.strip())
        except ValueError:
            raise ValueError(f"{b.strip()!r} is not an IP address") from None
        if first.version != last.version:
            raise ValueError(f"{text} mixes IPv4 and IPv6")
        if first > last:  # type: ignore[operator]
            raise ValueError(f"{text} is reversed")
        return AddressRange(text, first, last)
    if "/" not in text:
        raise ValueError(f"{text!r} is neither a CIDR (a.b.c.d/n) nor a range (first-last)")
    try:
        # Host bits may be set, as Go's net.ParseCIDR (and so MetalLB) allows: 198.18.0.10/24 is 198.18.0.0/24.
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid CIDR") from None
    return AddressRange(text, net.network_address, net.broadcast_address)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go/Kubernetes duration ("90s", "1m30s", "500ms", "0") in seconds; raise ValueError otherwise."""
    s = text.strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration like 90s or 1m30s")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError("empty duration")
    return total


@dataclasses.dataclass(frozen=True, order=True)
class Community:
    """A BGP community: standard (RFC 1997, ``asn:value``) or large (RFC 8092, ``large:global:data1:data2``)."""

    values: tuple[int, ...]

    @property
    def is_large(self) -> bool:
        return len(self.values) == 3

    def __str__(self) -> str:
        text = ":".join(str(v) for v in self.values)
        return f"large:{text}" if self.is_large else text


class CommunityFormatError(ValueError):
    """The text has neither 2 nor 4 fields: it may be meant as the name of a Community alias."""


def parse_community(text: str) -> Community:
    fields = text.split(":")
    if len(fields) == 2:
        limit, numbers = 0xFFFF, fields
    elif len(fields) == 4 and fields[0] == "large":
        limit, numbers = 0xFFFFFFFF, fields[1:]
    elif len(fields) == 4:
        raise ValueError(f"{text!r}: a large community is written large:<uint32>:<uint32>:<uint32>")
    else:
        raise CommunityFormatError(f"{text!r} is not a community (65535:65282 or large:1:2:3)")
    values: list[int] = []
    for f in numbers:
        if not f.isascii() or not f.isdigit() or int(f) > limit:
            raise ValueError(f"{text!r}: {f!r} is not a number in 0..{limit}")
        values.append(int(f))
    return Community(tuple(values))


# ---------------------------------------------------------------------------------------------------------------
# The kinds


@dataclasses.dataclass(frozen=True)
class ServiceAllocation:
    priority: int = 0  # lower wins; 0 means "no priority", used after every pool that has one
    namespaces: tuple[str, ...] = ()
    namespace_selectors: tuple[fields.LabelSelector, ...] = ()
    service_selectors: tuple[fields.LabelSelector, ...] = ()


@dataclasses.dataclass(frozen=True)
class IPAddressPool:
    meta: fields.Meta
    addresses: tuple[AddressRange, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    service_allocation: ServiceAllocation | None = None

    @property
    def name(self) -> str:
        return self.meta.name


@dataclasses.dataclass(frozen=True)
class PreferredNodeSelector:
    weight: int
    preference: fields.LabelSelector


@dataclasses.dataclass(frozen=True)
class L2Advertisement:
    meta: fields.Meta
    ip_address_pools: tuple[str, ...] = ()
    ip_address_pool_selectors: tuple[fields.LabelSelector, ...] = ()
    node_selectors: tuple[fields.LabelSelector, ...] = ()
    interfaces: tuple[str, ...] = ()  # empty: every interface
    service_selectors: tuple[fields.LabelSelector, ...] = ()
    preferred_node_selectors: tuple[PreferredNodeSelector, ...] = ()


@dataclasses.dataclass(frozen=True)
class BGPAdvertisement:
    meta: fields.Meta
    aggregation_length: int = 32
    aggregation_length_v6: int = 128
    local_pref: int = 0  # 0: not sent
    communities: tuple[Community, ...] = ()
    ip_address_pools: tuple[str, ...] = ()
    ip_address_pool_selectors: tuple[fields.LabelSelector, ...] = ()
    peers: tuple[str, ...] = ()  # empty: every peer
    node_selectors: tuple[fields.LabelSelector, ...] = ()
    service_selectors: tuple[fields.LabelSelector, ...] = ()


@dataclasses.dataclass(frozen=True)
class CommunityAlias:
    name: str
    value: Community


@dataclasses.dataclass(frozen=True)
class CommunityList:
    meta: fields.Meta
    communities: tuple[CommunityAlias, ...] = ()


@dataclasses.dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str = ""


@dataclasses.dataclass(frozen=True)
class BGPPeer:
    """A BGP neighbour. Times are seconds; None means "not set" (the speaker uses RFC 4271's 90 s / 30 s)."""

    meta: fields.Meta
    my_asn: int
    peer_asn: int = 0  # 0 when dynamic_asn is set
    dynamic_asn: str = ""  # "internal" | "external"
    local_asn: int = 0
    peer_address: IPAddress | None = None
    interface: str = ""  # unnumbered BGP; exclusive with peer_address
    peer_port: int = 179
    source_address: IPAddress | None = None
    hold_time: float | None = None
    keepalive_time: float | None = None
    connect_time: float | None = None
    router_id: ipaddress.IPv4Address | None = None
    node_selectors: tuple[fields.LabelSelector, ...] = ()
    password: str = dataclasses.field(default="", repr=False)
    password_secret: SecretRef | None = None
    bfd_profile: str = ""
    enable_graceful_restart: bool = False
    ebgp_multi_hop: bool = False
    vrf: str = ""
    disable_mp: bool = False
    dual_stack_address_family: bool = False


@dataclasses.dataclass(frozen=True)
class BFDProfile:
    """Intervals in milliseconds; None means the documented default (300, 300, 3, 50, off, off)."""

    meta: fields.Meta
    receive_interval: int | None = None
    transmit_interval: int | None = None
    detect_multiplier: int | None = None
    echo_interval: int | None = None
    echo_mode: bool = False
    passive_mode: bool = False
    minimum_ttl: int | None = None


@dataclasses.dataclass(frozen=True)
class LbConfig:
    pools: tuple[IPAddressPool, ...] = ()
    l2_advertisements: tuple[L2Advertisement, ...] = ()
    bgp_advertisements: tuple[BGPAdvertisement, ...] = ()
    communities: tuple[CommunityList, ...] = ()
    bgp_peers: tuple[BGPPeer, ...] = ()
    bfd_profiles: tuple[BFDProfile, ...] = ()

    def pool(self, name: str) -> IPAddressPool | None:
        return next((p for p in self.pools if p.name == name), None)

    def l2_advertisements_for(self, pool: IPAddressPool) -> tuple[L2Advertisement, ...]:
        return tuple(a for a in self.l2_advertisements if selects_pool(a, pool))

    def bgp_advertisements_for(self, pool: IPAddressPool) -> tuple[BGPAdvertisement, ...]:
        return tuple(a for a in self.bgp_advertisements if selects_pool(a, pool))


def selects_pool(adv: L2Advertisement | BGPAdvertisement, pool: IPAddressPool) -> bool:
    """MetalLB: no pool names and no pool selectors means every pool."""
    if not adv.ip_address_pools and not adv.ip_address_pool_selectors:
        return True
    return pool.name in adv.ip_address_pools or fields.any_selector_matches(
        adv.ip_address_pool_selectors, pool.meta.label_map
    )


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def describe(doc: object, index: int) -> str:
    """Name a document in a problem before (or whether or not) it parses: "Kind ns/name" or "document #N"."""
    if isinstance(doc, dict):
        kind, meta = doc.get("kind"), doc.get("metadata")
        if isinstance(kind, str) and kind and isinstance(meta, dict) and isinstance(meta.get("name"), str):
            ns = meta.get("namespace")
            return f"{kind} {ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE}/{meta['name']}"
        if isinstance(kind, str) and kind:
            return f"{kind} (document #{index + 1})"
    return f"document #{index + 1}"


_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")


def _pool(r: fields.Reader, meta: fields.Meta, spec: object) -> IPAddressPool:
    s = r.fields(
        spec,
        "spec",
        ("addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"),
        required=("addresses",),
    )
    ranges: list[AddressRange] = []
    entries = r.items(s, "addresses", "spec")
    if "addresses" in s and not entries and isinstance(s.get("addresses"), list):
        r.bad("spec.addresses", "needs at least one CIDR or range")
    for p, item in entries:
        if not isinstance(item, str):
            r.bad(p, f"must be a string, not {fields.type_name(item)}")
            continue
        try:
            ranges.append(parse_address_range(item))
        except ValueError as exc:
            r.bad(p, str(exc))
    alloc: ServiceAllocation | None = None
    if s.get("serviceAllocation") is not None:
        a = r.fields(
            s["serviceAllocation"],
            "spec.serviceAllocation",
            ("priority", "namespaces", "namespaceSelectors", "serviceSelectors"),
        )
        path = "spec.serviceAllocation"
        alloc = ServiceAllocation(
            priority=r.integer(a, "priority", path, lo=0, hi=2**31 - 1, default=0) or 0,
            namespaces=r.strings(a, "namespaces", path),
            namespace_selectors=r.selectors(a, "namespaceSelectors", path),
            service_selectors=r.selectors(a, "serviceSelectors", path),
        )
    return IPAddressPool(
        meta=meta,
        addresses=tuple(ranges),
        auto_assign=r.boolean(s, "autoAssign", "spec", default=True),
        avoid_buggy_ips=r.boolean(s, "avoidBuggyIPs", "spec", default=False),
        service_allocation=alloc,
    )


def _l2(r: fields.Reader, meta: fields.Meta, spec: object) -> L2Advertisement:
    s = r.fields(
        spec,
        "spec",
        (
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
            "serviceSelectors",
            "preferredNodeSelectors",
        ),
    )
    preferred: list[PreferredNodeSelector] = []
    for p, item in r.items(s, "preferredNodeSelectors", "spec"):
        e = r.fields(item, p, ("weight", "preference"), required=("weight",))
        weight = r.integer(e, "weight", p, lo=1, hi=100, default=1) or 1
        preferred.append(
            PreferredNodeSelector(weight, fields.parse_selector(r, e.get("preference"), fields.join(p, "preference")))
        )
    return L2Advertisement(
        meta=meta,
        ip_address_pools=r.strings(s, "ipAddressPools", "spec"),
        ip_address_pool_selectors=r.selectors(s, "ipAddressPoolSelectors", "spec"),
        node_selectors=r.selectors(s, "nodeSelectors", "spec"),
        interfaces=r.strings(s, "interfaces", "spec"),
        service_selectors=r.selectors(s, "serviceSelectors", "spec"),
        preferred_node_selectors=tuple(preferred),
    )


def _bgp_adv(r: fields.Reader, meta: fields.Meta, spec: object, aliases: Mapping[str, Community]) -> BGPAdvertisement:
    s = r.fields(
        spec,
        "spec",
        (
            "aggregationLength",
            "aggregationLengthV6",
            "localPref",
            "communities",
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "peers",
            "nodeSelectors",
            "serviceSelectors",
        ),
    )
    agg4 = r.integer(s, "aggregationLength", "spec", lo=1, hi=32, default=32)
    agg6 = r.integer(s, "aggregationLengthV6", "spec", lo=1, hi=128, default=128)
    service_selectors = r.selectors(s, "serviceSelectors", "spec")
    if service_selectors and (agg4 != 32 or agg6 != 128):
        r.bad("spec.serviceSelectors", "cannot be combined with an aggregationLength other than 32 / 128")
    communities: list[Community] = []
    for p, item in r.items(s, "communities", "spec"):
        if not isinstance(item, str):
            r.bad(p, f"must be a string, not {fields.type_name(item)}")
            continue
        if item in aliases:
            communities.append(aliases[item])
            continue
        try:
            communities.append(parse_community(item))
        except CommunityFormatError:
            r.bad(p, f"{item!r} is neither a community (65535:65282, large:1:2:3) nor a Community alias name")
        except ValueError as exc:
            r.bad(p, str(exc))
    return BGPAdvertisement(
        meta=meta,
        aggregation_length=agg4 or 32,
        aggregation_length_v6=agg6 or 128,
        local_pref=r.integer(s, "localPref", "spec", lo=0, hi=MAX_ASN, default=0) or 0,
        communities=tuple(dict.fromkeys(communities)),
        ip_address_pools=r.strings(s, "ipAddressPools", "spec"),
        ip_address_pool_selectors=r.selectors(s, "ipAddressPoolSelectors", "spec"),
        peers=r.strings(s, "peers", "spec"),
        node_selectors=r.selectors(s, "nodeSelectors", "spec"),
        service_selectors=service_selectors,
    )


def _community(r: fields.Reader, meta: fields.Meta, spec: object) -> CommunityList:
    s = r.fields(spec, "spec", ("communities",))
    out: list[CommunityAlias] = []
    for p, item in r.items(s, "communities", "spec"):
        e = r.fields(item, p, ("name", "value"), required=("name", "value"))
        name, value = r.string(e, "name", p), r.string(e, "value", p)
        if not name or not value:
            continue
        try:
            out.append(CommunityAlias(name, parse_community(value)))
        except ValueError as exc:
            r.bad(fields.join(p, "value"), str(exc))
    return CommunityList(meta, tuple(out))


def _duration(r: fields.Reader, m: Mapping[str, Any], key: str) -> float | None:
    text = r.string(m, key, "spec")
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        r.bad(f"spec.{key}", str(exc))
        return None


def _peer(r: fields.Reader, meta: fields.Meta, spec: object) -> BGPPeer:
    s = r.fields(
        spec,
        "spec",
        (
            "myASN",
            "peerASN",
            "dynamicASN",
            "localASN",
            "peerAddress",
            "interface",
            "sourceAddress",
            "peerPort",
            "holdTime",
            "keepaliveTime",
            "connectTime",
            "routerID",
            "nodeSelectors",
            "password",
            "passwordSecret",
            "bfdProfile",
            "enableGracefulRestart",
            "ebgpMultiHop",
            "vrf",
            "disableMP",
            "dualStackAddressFamily",
        ),
        required=("myASN",),
    )
    my_asn = r.integer(s, "myASN", "spec", lo=1, hi=MAX_ASN, default=0) or 0
    peer_asn = r.integer(s, "peerASN", "spec", lo=1, hi=MAX_ASN, default=0) or 0
    local_asn = r.integer(s, "localASN", "spec", lo=1, hi=MAX_ASN, default=0) or 0
    dynamic = r.string(s, "dynamicASN", "spec")
    if dynamic and dynamic not in ("internal", "external"):
        r.bad("spec.dynamicASN", f"{dynamic!r} is not internal or external")
    if s.get("peerASN") is None and not dynamic:
        r.bad("spec.peerASN", "is required (or set dynamicASN)")
    if s.get("peerASN") is not None and dynamic:
        r.bad("spec.dynamicASN", "cannot be set together with peerASN")
    ebgp_multi_hop = r.boolean(s, "ebgpMultiHop", "spec", default=False)
    if ebgp_multi_hop and peer_asn and peer_asn == my_asn:
        r.bad("spec.ebgpMultiHop", "is for eBGP only, but peerASN equals myASN")
    address = r.ip(s, "peerAddress", "spec")
    interface = r.string(s, "interface", "spec")
    if s.get("peerAddress") is None and not interface:
        r.bad("spec.peerAddress", "is required (or set interface)")
    if s.get("peerAddress") is not None and interface:
        r.bad("spec.interface", "cannot be set together with peerAddress")
    hold, keepalive = _duration(r, s, "holdTime"), _duration(r, s, "keepaliveTime")
    # MetalLB derives the missing timer from the other one (RFC 4271 suggests keepalive = hold / 3).
    if hold is not None and keepalive is None:
        keepalive = hold / 3
    elif hold is None and keepalive is not None:
        hold = keepalive * 3
    if hold is not None and keepalive is not None:
        if hold != 0 and hold < 3:
            r.bad("spec.holdTime", f"{s.get('holdTime')} is too short: must be 0 or at least 3s")
        elif keepalive > hold:
            r.bad("spec.keepaliveTime", f"{s.get('keepaliveTime')} is longer than holdTime ({hold:g}s)")
    connect = _duration(r, s, "connectTime")
    if connect is not None and (connect < 1 or connect > 65535 or connect != int(connect)):
        r.bad("spec.connectTime", "must be a whole number of seconds in 1s..65535s")
    router_ip = r.ip(s, "routerID", "spec")
    router_id = router_ip if isinstance(router_ip, ipaddress.IPv4Address) else None
    if router_ip is not None and router_id is None:
        r.bad("spec.routerID", f"{router_ip} is not an IPv4 address (a BGP identifier has 4 bytes)")
    secret: SecretRef | None = None
    if s.get("passwordSecret") is not None:
        sec = r.fields(s["passwordSecret"], "spec.passwordSecret", ("name", "namespace"))
        name = r.string(sec, "name", "spec.passwordSecret")
        if name:
            secret = SecretRef(name, r.string(sec, "namespace", "spec.passwordSecret"))
    password = r.string(s, "password", "spec")
    if password and secret is not None:
        r.bad("spec.passwordSecret", "cannot be set together with password")
    return BGPPeer(
        meta=meta,
        my_asn=my_asn,
        peer_asn=peer_asn,
        dynamic_asn=dynamic,
        local_asn=local_asn,
        peer_address=address,
        interface=interface,
        peer_port=r.integer(s, "peerPort", "spec", lo=1, hi=65535, default=179) or 179,
        source_address=r.ip(s, "sourceAddress", "spec"),
        hold_time=hold,
        keepalive_time=keepalive,
        connect_time=connect,
        router_id=router_id,
        node_selectors=r.selectors(s, "nodeSelectors", "spec"),
        password=password,
        password_secret=secret,
        bfd_profile=r.string(s, "bfdProfile", "spec"),
        enable_graceful_restart=r.boolean(s, "enableGracefulRestart", "spec", default=False),
        ebgp_multi_hop=ebgp_multi_hop,
        vrf=r.string(s, "vrf", "spec"),
        disable_mp=r.boolean(s, "disableMP", "spec", default=False),
        dual_stack_address_family=r.boolean(s, "dualStackAddressFamily", "spec", default=False),
    )


def _bfd(r: fields.Reader, meta: fields.Meta, spec: object) -> BFDProfile:
    s = r.fields(
        spec,
        "spec",
        (
            "receiveInterval",
            "transmitInterval",
            "detectMultiplier",
            "echoInterval",
            "echoMode",
            "passiveMode",
            "minimumTtl",
        ),
    )
    return BFDProfile(
        meta=meta,
        receive_interval=r.integer(s, "receiveInterval", "spec", lo=10, hi=60000),
        transmit_interval=r.integer(s, "transmitInterval", "spec", lo=10, hi=60000),
        detect_multiplier=r.integer(s, "detectMultiplier", "spec", lo=2, hi=255),
        echo_interval=r.integer(s, "echoInterval", "spec", lo=10, hi=60000),
        echo_mode=r.boolean(s, "echoMode", "spec", default=False),
        passive_mode=r.boolean(s, "passiveMode", "spec", default=False),
        minimum_ttl=r.integer(s, "minimumTtl", "spec", lo=1, hi=254),
    )


# kind -> apiVersion; the manager's `apply` uses this to route documents here.
KINDS: Mapping[str, str] = {
    "IPAddressPool": API_V1BETA1,
    "L2Advertisement": API_V1BETA1,
    "BGPAdvertisement": API_V1BETA1,
    "Community": API_V1BETA1,
    "BFDProfile": API_V1BETA1,
    "BGPPeer": API_V1BETA2,
}


def parse(docs: Iterable[object]) -> LbConfig:
    """Validate already-loaded documents (dicts) into one LbConfig; raise InvalidConfig listing every problem."""
    problems: list[fields.Problem] = []
    parsed: list[tuple[fields.Reader, Mapping[str, Any], fields.Meta]] = []
    for i, doc in enumerate(docs):
        r = fields.Reader(problems, describe(doc, i))
        d = r.fields(doc, "", _TOP_FIELDS, required=("apiVersion", "kind", "metadata"))
        kind, api = r.string(d, "kind", ""), r.string(d, "apiVersion", "")
        if not kind or not api:
            continue
        if kind not in KINDS:
            r.bad("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
            continue
        if api != KINDS[kind]:
            r.bad("apiVersion", f"{api!r} is wrong for {kind}: use {KINDS[kind]}")
            continue
        meta = fields.parse_meta(r, d, kind, default_namespace=DEFAULT_NAMESPACE)
        r.obj = str(meta)
        parsed.append((r, d, meta))

    by_kind: dict[str, list[Any]] = {k: [] for k in KINDS}
    seen: set[tuple[str, str]] = set()
    for r, _, meta in parsed:
        if meta.name and (meta.kind, meta.name) in seen:
            r.bad("metadata.name", f"another {meta.kind} is also named {meta.name!r}")
        seen.add((meta.kind, meta.name))

    # Advertisements refer to Community aliases by name.
    aliases: dict[str, Community] = {}
    builders: dict[str, Callable[[fields.Reader, fields.Meta, Any], Any]] = {
        "IPAddressPool": _pool,
        "L2Advertisement": _l2,
        "Community": _community,
        "BGPPeer": _peer,
        "BFDProfile": _bfd,
    }
    # Community documents first, wherever they are in the file.
    for r, body, meta in sorted(parsed, key=lambda item: item[2].kind != "Community"):
        if meta.kind == "Community":
            c = _community(r, meta, body.get("spec"))
            for i, alias in enumerate(c.communities):
                if alias.name in aliases:
                    r.bad(f"spec.communities[{i}].name", f"community alias {alias.name!r} is defined twice")
                aliases[alias.name] = alias.value
            by_kind["Community"].append(c)
        elif meta.kind == "BGPAdvertisement":
            by_kind[meta.kind].append((r, _bgp_adv(r, meta, body.get("spec"), aliases)))
        else:
            spec = body.get("spec")
            if meta.kind == "IPAddressPool" and spec is None:
                r.bad("spec", "is required")
                continue
            by_kind[meta.kind].append((r, builders[meta.kind](r, meta, spec)))

    pools = [obj for _, obj in by_kind["IPAddressPool"]]
    _check_overlaps(by_kind["IPAddressPool"])
    pool_names = {p.name for p in pools}
    peer_names = {obj.meta.name for _, obj in by_kind["BGPPeer"]}
    bfd_names = {obj.meta.name for _, obj in by_kind["BFDProfile"]}
    for r, adv in by_kind["L2Advertisement"] + by_kind["BGPAdvertisement"]:
        for i, name in enumerate(adv.ip_address_pools):
            if name not in pool_names:
                r.bad(f"spec.ipAddressPools[{i}]", f"no IPAddressPool is named {name!r}")
    for r, adv in by_kind["BGPAdvertisement"]:
        for i, name in enumerate(adv.peers):
            if name not in peer_names:
                r.bad(f"spec.peers[{i}]", f"no BGPPeer is named {name!r}")
        _check_aggregation(r, adv, pools)
    for r, peer in by_kind["BGPPeer"]:
        if peer.bfd_profile and peer.bfd_profile not in bfd_names:
            r.bad("spec.bfdProfile", f"no BFDProfile is named {peer.bfd_profile!r}")

    if problems:
        raise fields.InvalidConfig(problems)
    return LbConfig(
        pools=tuple(pools),
        l2_advertisements=tuple(obj for _, obj in by_kind["L2Advertisement"]),
        bgp_advertisements=tuple(obj for _, obj in by_kind["BGPAdvertisement"]),
        communities=tuple(by_kind["Community"]),
        bgp_peers=tuple(obj for _, obj in by_kind["BGPPeer"]),
        bfd_profiles=tuple(obj for _, obj in by_kind["BFDProfile"]),
    )


def _check_overlaps(pools: list[tuple[fields.Reader, IPAddressPool]]) -> None:
    """Sort every range by start; a range that starts before the previous one ends overlaps it."""
    entries = sorted(
        (
            (rng.version, int(rng.first), int(rng.last), idx, i)
            for idx, (_, pool) in enumerate(pools)
            for i, rng in enumerate(pool.addresses)
        ),
    )
    prev: tuple[int, int, int, int, int] | None = None
    for e in entries:
        if prev is not None and prev[0] == e[0] and e[1] <= prev[2]:
            r, pool = pools[e[3]]
            other_pool = pools[prev[3]][1]
            other = other_pool.addresses[prev[4]].text
            where = "" if other_pool is pool else f" of {other_pool.meta}"
            r.bad(f"spec.addresses[{e[4]}]", f"{pool.addresses[e[4]].text} overlaps {other}{where}")
        if prev is None or prev[0] != e[0] or e[2] > prev[2]:
            prev = e


def _check_aggregation(r: fields.Reader, adv: BGPAdvertisement, pools: Sequence[IPAddressPool]) -> None:
    """An aggregate shorter than the pool's own prefix would announce addresses the pool does not own."""
    for pool in pools:
        if not selects_pool(adv, pool):
            continue
        for rng in pool.addresses:
            length = adv.aggregation_length if rng.version == 4 else adv.aggregation_length_v6
            widest = rng.widest_prefix()
            if length < widest:
                field = "aggregationLength" if rng.version == 4 else "aggregationLengthV6"
                r.bad(
                    f"spec.{field}",
                    f"/{length} is shorter than /{widest} of {rng.text} in {pool.meta}",
                )


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 integers, so a community like 1234:1 stays the string "1234:1"."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "-+0123456789.":
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:int",
        re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
        [_first],
    )
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        [_first],
    )


def load_yaml(text: str) -> list[object]:
    """Load a multi-document YAML string; empty documents are dropped. Raise InvalidConfig on YAML errors."""
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise fields.InvalidConfig([fields.Problem("YAML", where, str(problem))]) from exc


def parse_yaml(text: str) -> LbConfig:
    return parse(load_yaml(text))
