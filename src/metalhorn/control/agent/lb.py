"""The agent's load-balancer runtime: the manager's LB wish in, ARP/NDP answers, BGP routes and DNAT rules out.

Every ``refresh_interval`` it reads ``/v1/lb/config``, ``/v1/lb/services`` and ``/v1/nodes``, lets the pure
:mod:`metalhorn.control.agent.lbplan` compute the node's whole wish, and hands each part to its component as
desired state:

* layer 2 -- :class:`~metalhorn.lb.layer2.membership.Membership` (UDP probes to every node's address at
  ``probe_port``) feeds the :class:`~metalhorn.lb.layer2.announcer.Announcer`, which runs the pure election and
  answers ARP/NDP on ``interfaces`` for the VIPs this node owns (gratuitous ARP / unsolicited NA on takeover);
* delivery -- :class:`~metalhorn.lb.layer2.delivery.Delivery` DNATs VIP:port to the healthy endpoints (nftables,
  userspace proxy fallback), for L2 services through the announcer and for BGP-only services directly;
* BGP -- one :class:`~metalhorn.lb.bgp.speaker.Speaker`, created when the configuration has BGPPeers, with the
  node's labels (tags, zone, ``kubernetes.io/hostname``) choosing peers and advertisements.

Then it reports ``PUT /v1/lb/announcements/{node}`` ``{l2, bgp, bgp_sessions}``, which the service views and
``metalhorn lb services`` / ``lb peers`` show. Between refreshes the components run on their own (probes every
0.1 s, takeovers do not wait for the manager), so a manager outage changes nothing that is announced.

The runtime is kept off the storage path: it runs as its own task, every failure is logged and retried at the
next refresh, and nothing here touches the instance manager, so an LB problem never disturbs a volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors, logs, metrics
from metalhorn.control import client as client_mod
from metalhorn.control.agent import lbplan
from metalhorn.lb import config, election, fields
from metalhorn.lb.bgp import speaker as speaker_mod
from metalhorn.lb.layer2 import announcer as announcer_mod
from metalhorn.lb.layer2 import delivery as delivery_mod
from metalhorn.lb.layer2 import membership as membership_mod
from metalhorn.lb.layer2 import responder as responder_mod

log = logging.getLogger(__name__)

DEFAULT_PROBE_PORT = 7946


@dataclasses.dataclass(frozen=True, kw_only=True)
class LbSettings:
    node: str
    listen_ip: str  # membership listens here; BGP router id when --router-id is not given and this is IPv4
    interfaces: tuple[str, ...] = ()  # layer 2 answers here; none: no layer 2 from this node
    router_id: ipaddress.IPv4Address | None = None
    next_hop_v6: ipaddress.IPv6Address | None = None  # for IPv6 VIPs over IPv4 sessions
    probe_port: int = DEFAULT_PROBE_PORT
    probe_interval: float = membership_mod.DEFAULT_INTERVAL
    probe_timeout: float | None = None  # None: three intervals
    refresh_interval: float = 1.0
    delivery: str = "auto"  # auto | nft | proxy | none
    health_interval: float = 1.0
    tags: tuple[str, ...] = ()
    zone: str = ""


def default_router_id(node: str, listen_ip: str) -> ipaddress.IPv4Address:
    """The listen IP when it is IPv4, else four bytes of sha256(node) (BGP identifiers are 32-bit)."""
    try:
        ip = ipaddress.ip_address(listen_ip)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv4Address) and not ip.is_unspecified:
        return ip
    return ipaddress.IPv4Address(hashlib.sha256(node.encode()).digest()[:4])


def global_ipv6(*, interfaces: tuple[str, ...] = (), table: str = "/proc/net/if_inet6") -> ipaddress.IPv6Address | None:
    """A global IPv6 address of this host (on ``interfaces`` first), for the BGP IPv6 next hop."""
    found: list[tuple[int, ipaddress.IPv6Address]] = []
    try:
        with open(table) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[3] != "00":  # scope 00: global
            continue
        try:
            address = ipaddress.IPv6Address(int(parts[0], 16))
        except ValueError:
            continue
        found.append((0 if parts[5] in interfaces else 1, address))
    return min(found)[1] if found else None


class _CounterFeed:
    """Turns cumulative component counters (which restart when a responder is reopened) into counter increments."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def delta(self, key: str, value: int) -> int:
        last = self._last.get(key, 0)
        self._last[key] = value
        return value - last if value >= last else value


class LbRuntime:
    def __init__(
        self,
        settings: LbSettings,
        *,
        api: client_mod.AsyncClient,
        clock: clock_mod.Clock,
        registry: metrics.Registry,
        open_responder: Callable[[str], responder_mod.Responder] = responder_mod.Responder.open,
        link_is_up: Callable[[str], bool] = responder_mod.link_is_up,
    ) -> None:
        self.settings = settings
        self._api = api
        self._clock = clock
        self._open_responder = open_responder
        self._link_is_up = link_is_up
        self._lb = config.LbConfig()
        self._config_version: object = None
        self._plan: lbplan.Plan | None = None
        self._l2_set: dict[str, lbplan.Balancer] = {}
        self._direct: dict[str, lbplan.Balancer] = {}
        self._peers: Mapping[str, tuple[str, int]] = {}
        self._nodes: tuple[election.Node, ...] = ()
        self._labels: Mapping[str, str] = {}
        self.membership: membership_mod.Membership | None = None
        self.delivery: delivery_mod.Delivery | None = None
        self.announcer: announcer_mod.Announcer | None = None
        self.speaker: speaker_mod.Speaker | None = None
        self._started = False
        self.synced = False
        self.last_error = ""
        self._feed = _CounterFeed()
        self._metrics(registry)

    # -- life cycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the probe socket and start delivery; safe to call again after a failure (nothing leaks)."""
        s = self.settings
        if s.interfaces and self.membership is None:
            probe = membership_mod.Settings(interval=s.probe_interval, timeout=s.probe_timeout)
            fresh = membership_mod.Membership(s.node, clock=self._clock, settings=probe)
            await fresh.start((s.listen_ip, s.probe_port))  # first: a taken port fails before anything runs
            self.membership = fresh
        if s.delivery != "none" and self.delivery is None:
            self.delivery = delivery_mod.Delivery(
                mode=delivery_mod.Mode(s.delivery), health=delivery_mod.HealthSettings(interval=s.health_interval)
            )
            await self.delivery.start()
        membership = self.membership
        if membership is not None and self.announcer is None:
            announcer = self.announcer = announcer_mod.Announcer(
                election.Node(s.node, interfaces=s.interfaces),
                delivery=self.delivery,
                clock=self._clock,
                holdoff=membership.state.settings.window,
                open_responder=self._open_responder,
                link_is_up=self._link_is_up,
            )
            membership.on_change = lambda healthy: announcer.on_membership(healthy, ready=membership.ready())
            membership.on_tick = lambda: announcer.on_membership(membership.healthy(), ready=membership.ready())
        self._started = True
        log.info(
            "lb runtime started %s",
            logs.kv(node=s.node, interfaces=",".join(s.interfaces) or "-", delivery=self._delivery_mode()),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop``; never raises (an LB failure must not take the agent, and its volumes, down)."""
        while not stop.is_set():
            try:
                if not self._started:
                    await self.start()
                await self.refresh()
                if self.last_error:
                    log.info("lb refresh works again %s", logs.kv(node=self.settings.node))
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # isolation: log, count, retry at the next refresh
                message = exc.message if isinstance(exc, errors.MetalhornError) else repr(exc)
                self._errors.inc()
                if message != self.last_error:
                    log.warning("lb refresh failed %s", logs.kv(node=self.settings.node, error=message))
                self.last_error = message
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.refresh_interval)

    async def close(self) -> None:
        """Stop answering, send Cease to every BGP peer, remove the DNAT rules, tell the manager."""
        if self.membership is not None:
            self.membership.close()
        if self.speaker is not None:
            await self.speaker.close()
        if self.announcer is not None:
            await self.announcer.close()  # closes the delivery too
        elif self.delivery is not None:
            await self.delivery.close()
        if self._started:
            with contextlib.suppress(errors.MetalhornError):
                await self._api.put_announcements(self.settings.node, {"l2": [], "bgp": {}, "bgp_sessions": []})

    # -- one refresh ------------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        s = self.settings
        answer = await self._api.get_lb_config()
        version = answer.get("resource_version")
        if version != self._config_version:
            try:
                self._lb = config.parse(answer.get("documents") or [])
            except fields.InvalidConfig as exc:  # the manager validates; keep the last good one if not
                raise errors.InvalidArgument(f"stored LB configuration does not validate: {exc.message}") from exc
            self._config_version = version
        services = await self._api.list_lb_services()
        nodes = await self._api.list_nodes()
        plan = lbplan.plan(
            node=s.node,
            lb=self._lb,
            services=services,
            nodes=nodes,
            interfaces=s.interfaces,
            probe_port=s.probe_port,
            tags=s.tags,
            zone=s.zone,
        )
        self._apply(plan)
        await self._api.put_announcements(s.node, self.report())
        self.synced = True

    def _apply(self, plan: lbplan.Plan) -> None:
        self._plan = plan
        if self.membership is not None and plan.peers != self._peers:
            self.membership.set_peers(plan.peers)
        self._peers = plan.peers
        l2 = plan.l2 if self.announcer is not None else {}
        direct = {**plan.bgp_only, **({} if self.announcer is not None else plan.l2)}
        if self.delivery is not None:
            for name in [n for n in self._direct if n not in direct]:
                self.delivery.remove_balancer(name)
        if self.announcer is not None:
            if plan.nodes != self._nodes:
                self.announcer.set_nodes(plan.nodes)
            for name in [n for n in self._l2_set if n not in l2]:
                self.announcer.remove_balancer(name)
            for name, b in l2.items():
                if self._l2_set.get(name) != b:
                    self.announcer.set_balancer(
                        name, b.ips, b.endpoints, ports=b.ports, advertisements=b.advertisement_map
                    )
        self._nodes = plan.nodes
        self._l2_set = dict(l2)
        if self.delivery is not None:
            for name, b in direct.items():
                self.delivery.set_balancer(name, b.ips, b.ports, b.endpoints)
        self._direct = dict(direct)
        self._apply_bgp(plan)

    def _apply_bgp(self, plan: lbplan.Plan) -> None:
        s = self.settings
        if self.speaker is None:
            if not self._lb.bgp_peers:
                return
            self.speaker = speaker_mod.Speaker(
                node=s.node,
                router_id=s.router_id or default_router_id(s.node, s.listen_ip),
                clock=self._clock,
                labels=plan.labels,
                next_hop_v6=s.next_hop_v6 or global_ipv6(interfaces=s.interfaces),
            )
            self._labels = plan.labels
        elif plan.labels != self._labels:
            self.speaker.set_node_labels(plan.labels)
            self._labels = plan.labels
        self.speaker.set_config(self._lb.bgp_peers)
        self.speaker.set_advertisements(self._lb, plan.vips)

    # -- status -----------------------------------------------------------------------------------------------
    def owned(self) -> frozenset[lbplan.IPAddress]:
        if self.announcer is None:
            return frozenset()
        return frozenset(ip for ips in self.announcer.owned().values() for ip in ips)

    def report(self) -> dict[str, Any]:
        """The body of ``PUT /v1/lb/announcements/{node}``."""
        plan = self._plan
        sessions = self.speaker.status() if self.speaker is not None else ()
        established = [st.name for st in sessions if st.state == "Established"]
        return {
            "l2": lbplan.l2_report(plan.l2, self.owned()) if plan and self.announcer else [],
            "bgp": lbplan.bgp_report(self._lb, labels=plan.labels, vips=plan.vips, established=established)
            if plan
            else {},
            "bgp_sessions": [
                {
                    "peer": st.name,
                    "address": st.peer,
                    "state": st.state,
                    "prefixes_advertised": st.prefixes_advertised,
                    "established_at": st.established_at,
                    "last_error": st.last_error,
                    "flaps": st.flaps,
                }
                for st in sessions
            ],
        }

    def _delivery_mode(self) -> str:
        return self.delivery.mode.value if self.delivery is not None else "none"

    # -- metrics ----------------------------------------------------------------------------------------------
    def _metrics(self, registry: metrics.Registry) -> None:
        node = ("node",)
        answered = registry.counter(
            "metalhorn_lb_requests_answered_total", "ARP requests and neighbour solicitations answered.", labels=node
        )
        takeovers = registry.counter("metalhorn_lb_takeovers_total", "VIPs this node took over.", labels=node)
        sent = registry.counter(
            "metalhorn_lb_announcements_sent_total", "Gratuitous ARPs and unsolicited NAs sent.", labels=node
        )
        failures = registry.counter(
            "metalhorn_lb_health_check_failures_total", "Failed endpoint health checks (TCP connect).", labels=node
        )
        self._errors = registry.counter(
            "metalhorn_lb_refresh_errors_total", "Failed refreshes of the LB wish from the manager.", labels=node
        ).labels(node=self.settings.node)
        owned = registry.gauge("metalhorn_lb_owned_ips", "VIPs this node answers ARP/NDP for now.", labels=node)
        healthy = registry.gauge("metalhorn_lb_healthy_nodes", "Nodes this node's membership sees alive.", labels=node)
        state = registry.gauge(
            "metalhorn_bgp_session_state", "1 for the BGP session's current state.", labels=("node", "peer", "state")
        )
        up = registry.gauge("metalhorn_bgp_session_established", "1 if the BGP session is up.", labels=("node", "peer"))
        prefixes = registry.gauge(
            "metalhorn_bgp_prefixes_advertised", "Prefixes this node advertises to the peer.", labels=("node", "peer")
        )
        me = self.settings.node

        def collect() -> None:
            counts = self.announcer.counters() if self.announcer is not None else {}
            if self.announcer is None and self.delivery is not None:
                counts = {"health_check_failures": self.delivery.counters.health_check_failures}
            feeds: tuple[tuple[metrics.Counter, str], ...] = (
                (answered, "requests_answered"),
                (takeovers, "takeovers"),
                (sent, "announcements_sent"),
                (failures, "health_check_failures"),
            )
            for family, key in feeds:
                family.labels(node=me).inc(self._feed.delta(key, int(counts.get(key, 0))))
            owned.labels(node=me).set(len(self.owned()))
            healthy.labels(node=me).set(len(self.membership.healthy()) if self.membership is not None else 0)
            for gauge in (state, up, prefixes):
                gauge.clear()
            for st in self.speaker.status() if self.speaker is not None else ():
                state.labels(node=me, peer=st.name, state=st.state).set(1)
                up.labels(node=me, peer=st.name).set(1 if st.state == "Established" else 0)
                prefixes.labels(node=me, peer=st.name).set(st.prefixes_advertised)

        registry.on_collect(collect)
