"""What a node announces to each BGP peer: MetalLB's BGPPeer/BGPAdvertisement semantics as pure functions.

The speaker hands in the whole wish -- the parsed ``LbConfig``, the node's name and labels, and the VIPs this
node must announce -- and gets back, per peer, the set of ``Route`` values a session should hold. Sessions then
diff that against what they already sent (session.py), so a caller never computes changes itself.

Rules, as MetalLB applies them:
  * a peer talks to this node when it has no node selector or one of its selectors matches the node's labels
    (the labels always include ``kubernetes.io/hostname: <node>``);
  * a VIP is announced by each BGPAdvertisement that selects its pool, whose node selectors (if any) match this
    node, whose service selectors (if any) match the service, and whose ``peers`` (if any) name the peer;
  * the prefix is the VIP masked to ``aggregationLength`` (IPv4) / ``aggregationLengthV6`` (IPv6), so several
    VIPs may fold into one aggregate route;
  * communities and large communities go with the route; ``localPref`` is sent on iBGP sessions only (RFC 4271
    section 5.1.5 forbids LOCAL_PREF towards external peers);
  * when two advertisements yield the same prefix, their communities are united and the highest local
    preference wins, so the result does not depend on the order of documents in a file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

from metalhorn.lb import config as lb_config
from metalhorn.lb import fields
from metalhorn.lb.bgp.messages import attributes, nlri

HOSTNAME_LABEL = "kubernetes.io/hostname"


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One prefix with the attributes that vary per route; the session adds ORIGIN, AS_PATH and next hops."""

    prefix: nlri.Prefix
    communities: tuple[int, ...] = ()
    large_communities: tuple[attributes.LargeCommunity, ...] = ()
    local_pref: int | None = None  # iBGP only; None: the session's default (100)

    def attribute_key(self) -> tuple[tuple[int, ...], tuple[attributes.LargeCommunity, ...], int | None]:
        """Routes with equal keys share one UPDATE."""
        return self.communities, self.large_communities, self.local_pref


@dataclasses.dataclass(frozen=True, slots=True)
class Vip:
    """A service IP this node must announce: the IP, the pool it came from and the service's labels."""

    ip: fields.IPAddress
    pool: str
    service: str = ""
    service_labels: tuple[tuple[str, str], ...] = ()


def node_labels(node: str, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    merged = {HOSTNAME_LABEL: node}
    merged.update(labels or {})
    return merged


def peer_selects_node(peer: lb_config.BGPPeer, labels: Mapping[str, str]) -> bool:
    return not peer.node_selectors or fields.any_selector_matches(peer.node_selectors, labels)


def is_internal(peer: lb_config.BGPPeer) -> bool:
    if peer.dynamic_asn:
        return peer.dynamic_asn == "internal"
    return peer.peer_asn == peer.my_asn


def pool_of(config: lb_config.LbConfig, ip: fields.IPAddress) -> str | None:
    """The pool whose address ranges hold ``ip`` (pools never overlap), for callers that only know the IP."""
    for pool in config.pools:
        if any(ip in rng for rng in pool.addresses):
            return pool.name
    return None


def _community_values(
    communities: Iterable[lb_config.Community],
) -> tuple[tuple[int, ...], tuple[attributes.LargeCommunity, ...]]:
    standard: list[int] = []
    large: list[attributes.LargeCommunity] = []
    for item in communities:
        if item.is_large:
            large.append(attributes.LargeCommunity(*item.values))
        else:
            standard.append(attributes.community(*item.values))
    return tuple(standard), tuple(large)


def _merge(old: Route, new: Route) -> Route:
    prefs = [p for p in (old.local_pref, new.local_pref) if p is not None]
    return Route(
        prefix=old.prefix,
        communities=tuple(sorted(set(old.communities) | set(new.communities))),
        large_communities=tuple(
            sorted(
                set(old.large_communities) | set(new.large_communities),
                key=lambda c: (c.global_admin, c.local1, c.local2),
            )
        ),
        local_pref=max(prefs) if prefs else None,
    )


def routes_for_peer(
    config: lb_config.LbConfig,
    peer: lb_config.BGPPeer,
    *,
    labels: Mapping[str, str],
    vips: Iterable[Vip],
) -> tuple[Route, ...]:
    """Every route this node announces to ``peer`` (empty when the peer does not select the node)."""
    if not peer_selects_node(peer, labels):
        return ()
    internal = is_internal(peer)
    out: dict[nlri.Prefix, Route] = {}
    for vip in vips:
        pool = config.pool(vip.pool)
        if pool is None:
            continue
        service_labels = dict(vip.service_labels)
        for adv in config.bgp_advertisements_for(pool):
            if adv.peers and peer.meta.name not in adv.peers:
                continue
            if adv.node_selectors and not fields.any_selector_matches(adv.node_selectors, labels):
                continue
            if adv.service_selectors and not fields.any_selector_matches(adv.service_selectors, service_labels):
                continue
            length = adv.aggregation_length if vip.ip.version == 4 else adv.aggregation_length_v6
            prefix = ipaddress.ip_network((vip.ip, length), strict=False)
            standard, large = _community_values(adv.communities)
            route = Route(
                prefix=prefix,
                communities=tuple(sorted(set(standard))),
                large_communities=large,
                local_pref=adv.local_pref if internal and adv.local_pref else None,
            )
            previous = out.get(prefix)
            out[prefix] = route if previous is None else _merge(previous, route)
    return tuple(sorted(out.values(), key=lambda r: (r.prefix.version, r.prefix)))
