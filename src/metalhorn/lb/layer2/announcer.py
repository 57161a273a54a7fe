"""The layer-2 speaker of one node: desired balancers in, ARP/NDP answers and traffic delivery out.

An agent (or ``metalhorn l2 announce``) hands over the whole wish -- ``set_balancer(name, ips, endpoints)`` for
each service, ``set_nodes(...)`` for the candidate nodes -- and feeds membership changes in through
:meth:`Announcer.on_membership`.  Every change, and every membership tick, re-runs the pure election
(:mod:`metalhorn.lb.election`) and hands each interface's responder the IPs this node now owns there.

Ownership is withheld while the view cannot be trusted:
- until membership is ready (one probe window after start), so a restarting node does not claim everything;
- on an interface whose link is down, and for one probe window after it comes back up, so a node cut off from
  its peers -- which then believes it is alone -- never answers on the wire before it has heard them again.

Delivery (DNAT or proxy) is set up for every balancer on every node, owner or not, so a takeover is only ARP.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from metalhorn.common import clock as clock_mod
from metalhorn.common.logs import kv
from metalhorn.lb import config, election, model
from metalhorn.lb.layer2 import delivery as delivery_mod
from metalhorn.lb.layer2 import responder as responder_mod

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Advertisements = Sequence[config.L2Advertisement] | Mapping[IPAddress, Sequence[config.L2Advertisement]]


@dataclasses.dataclass(frozen=True)
class _Wanted:
    ips: tuple[IPAddress, ...]
    advertisements: Mapping[IPAddress, tuple[config.L2Advertisement, ...]]


class Announcer:
    """Desired state in; see the module docstring.  Call :meth:`close` to release every IP and rule."""

    def __init__(
        self,
        node: election.Node,
        *,
        delivery: delivery_mod.Delivery | None,
        clock: clock_mod.Clock | None = None,
        holdoff: float = 0.3,
        open_responder: Callable[[str], responder_mod.Responder] = responder_mod.Responder.open,
        link_is_up: Callable[[str], bool] = responder_mod.link_is_up,
    ) -> None:
        self.node = node
        self.delivery = delivery
        self.clock = clock or clock_mod.SystemClock()
        self.holdoff = holdoff
        self._open_responder = open_responder
        self._link_is_up = link_is_up
        self._nodes: dict[str, election.Node] = {node.name: node}
        self._balancers: dict[str, _Wanted] = {}
        self._healthy: frozenset[str] = frozenset({node.name})
        self._ready = False
        self._responders: dict[str, responder_mod.Responder] = {}
        self._link_up_since: dict[str, float | None] = {}
        self._assignments: dict[IPAddress, election.Assignment] = {}
        self._version = 0  # bumped by every desired-state change; the election reruns only when inputs change
        self._elected: tuple[int, frozenset[str]] | None = None

    # -- desired state ----------------------------------------------------------------------------------------

    def set_balancer(
        self,
        name: str,
        ips: Iterable[IPAddress],
        endpoints: Iterable[model.Endpoint],
        *,
        ports: Iterable[int] = (80,),
        advertisements: Advertisements = (election.EVERYWHERE,),
    ) -> None:
        """Announce ``ips`` (when this node wins them) and deliver ``ports`` on them to ``endpoints``."""
        ip_list = tuple(sorted(set(ips), key=lambda a: (a.version, int(a))))
        if isinstance(advertisements, Mapping):
            advs = {ip: tuple(advertisements.get(ip, ())) for ip in ip_list}
        else:
            advs = {ip: tuple(advertisements) for ip in ip_list}
        self._balancers[name] = _Wanted(ip_list, advs)
        self._version += 1
        if self.delivery is not None:
            self.delivery.set_balancer(name, ip_list, ports, endpoints)
        self.reconcile()

    def remove_balancer(self, name: str) -> None:
        if self._balancers.pop(name, None) is not None:
            self._version += 1
            if self.delivery is not None:
                self.delivery.remove_balancer(name)
            self.reconcile()

    def set_nodes(self, nodes: Iterable[election.Node]) -> None:
        """The candidate nodes (this one is always included).  Health comes from membership."""
        self._nodes = {n.name: n for n in nodes}
        self._nodes[self.node.name] = self.node
        self._version += 1
        self.reconcile()

    def on_membership(self, healthy: frozenset[str], *, ready: bool = True) -> None:
        self._healthy = healthy | {self.node.name}
        self._ready = ready
        self.reconcile()

    # -- status -----------------------------------------------------------------------------------------------

    def owners(self) -> dict[IPAddress, str]:
        """The announcing node of every IP, as this node sees it (for service status and ``lb services``)."""
        return {ip: a.node for ip, a in self._assignments.items()}

    def owned(self) -> dict[str, frozenset[IPAddress]]:
        """What this node answers for right now, per interface."""
        return {name: r.owned for name, r in self._responders.items()}

    def counters(self) -> dict[str, int]:
        out = {"requests_answered": 0, "takeovers": 0, "announcements_sent": 0, "health_check_failures": 0}
        for r in self._responders.values():
            out["requests_answered"] += r.counters.requests_answered
            out["takeovers"] += r.counters.takeovers
            out["announcements_sent"] += r.counters.announcements_sent
        if self.delivery is not None:
            out["health_check_failures"] = self.delivery.counters.health_check_failures
        return out

    # -- the diff ---------------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        now = self.clock.monotonic()
        usable = {i for i in self.node.interfaces if self._interface_usable(i, now)}
        if self._elected != (self._version, self._healthy):
            advs: dict[IPAddress, tuple[config.L2Advertisement, ...]] = {}
            for wanted in self._balancers.values():
                for ip, a in wanted.advertisements.items():
                    advs[ip] = advs.get(ip, ()) + a
            self._assignments = election.assign(
                advs, nodes=self._nodes.values(), healthy=self._healthy, advertisements_for=advs
            )
            self._elected = (self._version, self._healthy)
        mine = election.owned_by(self._assignments, self.node.name) if self._ready else {}
        per_interface: dict[str, set[IPAddress]] = {i: set() for i in self.node.interfaces}
        for ip, interfaces in mine.items():
            for i in interfaces:
                if i in usable:
                    per_interface[i].add(ip)
        for interface, ips in per_interface.items():
            r = self._responders.get(interface)
            if r is None and not ips:
                continue
            if r is None:
                r = self._responders[interface] = self._open_responder(interface)
            if frozenset(ips) != r.owned:
                r.set_owned(ips)

    def _interface_usable(self, interface: str, now: float) -> bool:
        up = self._link_is_up(interface)
        known = interface in self._link_up_since
        since = self._link_up_since.get(interface)
        if not up:
            if since is not None or not known:
                log.warning("link down %s", kv(node=self.node.name, interface=interface))
                # A packet socket does not reliably hear frames again after its link bounced: open a new one.
                r = self._responders.pop(interface, None)
                if r is not None:
                    r.close()
            self._link_up_since[interface] = None
            return False
        if not known:
            since = float("-inf")  # up at start: membership's warm-up already holds us back
        elif since is None:
            log.info("link up %s", kv(node=self.node.name, interface=interface, holdoff=f"{self.holdoff:g}s"))
            since = now
        self._link_up_since[interface] = since
        return now - since >= self.holdoff

    async def close(self) -> None:
        for r in self._responders.values():
            r.close()
        self._responders.clear()
        if self.delivery is not None:
            await self.delivery.close()
