"""Announcer with fake responders, links and clock; nft rendering of delivery (pure parts)."""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from metalhorn.lb import election, model
from metalhorn.lb.layer2 import announcer, delivery, responder
from metalhorn.testing.clock import FakeClock

VIPS = [ipaddress.ip_address(f"198.18.0.{i}") for i in range(100, 120)]
NAMES = ("n1", "n2", "n3")


class FakeResponder:
    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.owned: frozenset[Any] = frozenset()
        self.history: list[frozenset[Any]] = []

    def set_owned(self, ips: Any) -> None:
        self.owned = frozenset(ips)
        self.history.append(self.owned)

    def close(self) -> None:
        self.owned = frozenset()


def make(name: str = "n1") -> tuple[announcer.Announcer, dict[str, FakeResponder], dict[str, bool], FakeClock]:
    opened: dict[str, FakeResponder] = {}
    links = {"eth0": True}
    clock = FakeClock()

    def open_responder(interface: str) -> responder.Responder:
        opened[interface] = FakeResponder(interface)
        return cast(responder.Responder, opened[interface])

    a = announcer.Announcer(
        election.Node(name, interfaces=("eth0",)),
        delivery=None,
        clock=clock,
        holdoff=0.3,
        open_responder=open_responder,
        link_is_up=lambda i: links[i],
    )
    a.set_nodes(election.Node(n, interfaces=("eth0",)) for n in NAMES)
    a.set_balancer("default/web", VIPS, [])
    return a, opened, links, clock


def expected(node: str, healthy: set[str]) -> set[Any]:
    return {ip for ip in VIPS if election.candidates(ip, healthy)[0] == node}


def test_nothing_is_claimed_before_membership_is_ready() -> None:
    a, opened, _, _ = make()
    a.on_membership(frozenset({"n1"}), ready=False)
    assert not opened or not opened["eth0"].owned


def test_owns_exactly_what_it_wins_and_takes_over_a_dead_peers_ips() -> None:
    a, opened, _, _ = make()
    a.on_membership(frozenset(NAMES))
    assert opened["eth0"].owned == expected("n1", set(NAMES))
    a.on_membership(frozenset({"n1", "n3"}))
    assert opened["eth0"].owned == expected("n1", {"n1", "n3"})
    assert expected("n1", set(NAMES)) <= opened["eth0"].owned
    assert a.owners() == {ip: election.candidates(ip, {"n1", "n3"})[0] for ip in VIPS}


def test_link_down_releases_everything_and_link_up_waits_one_holdoff() -> None:
    a, opened, links, clock = make()
    a.on_membership(frozenset(NAMES))
    mine = opened["eth0"].owned
    assert mine
    links["eth0"] = False
    a.on_membership(frozenset({"n1"}))  # cut off: it now believes it is alone
    assert opened["eth0"].owned == frozenset()
    links["eth0"] = True
    a.on_membership(frozenset({"n1"}))
    assert opened["eth0"].owned == frozenset(), "no claim right after the link returns"
    clock.advance(0.31)
    a.on_membership(frozenset(NAMES))
    assert opened["eth0"].owned == mine


def test_removing_a_balancer_releases_its_ips() -> None:
    a, opened, _, _ = make()
    a.on_membership(frozenset(NAMES))
    a.remove_balancer("default/web")
    assert opened["eth0"].owned == frozenset()
    assert a.owners() == {}


EP = [
    model.Endpoint(ipaddress.ip_address("198.18.0.11"), 8080),
    model.Endpoint(ipaddress.ip_address("198.18.0.12"), 8080),
]
EP6 = model.Endpoint(ipaddress.ip_address("2001:db8::11"), 8080)


def test_render_dnat_round_robin_over_healthy_endpoints_per_family() -> None:
    b = delivery.Balancer("default/web", (VIPS[0], ipaddress.ip_address("2001:db8::100")), (80,), (*EP, EP6))
    text = delivery.render([b], {EP[1]: False})
    assert "ip daddr 198.18.0.100 tcp dport 80 dnat ip to numgen inc mod 1 map { 0 : 198.18.0.11 . 8080 }" in text
    assert "ip6 daddr 2001:db8::100 tcp dport 80 dnat ip6 to numgen inc mod 1 map { 0 : 2001:db8::11 . 8080 }" in text
    assert "ct original ip daddr { 198.18.0.100 } masquerade" in text
    assert text.startswith("table inet metalhorn\ndelete table inet metalhorn\n")


def test_render_uses_every_endpoint_when_none_is_healthy() -> None:
    b = delivery.Balancer("default/web", (VIPS[0],), (80, 443), tuple(EP))
    text = delivery.render([b], {EP[0]: False, EP[1]: False})
    assert text.count("numgen inc mod 2") == 2


def test_render_empty_is_an_empty_table() -> None:
    text = delivery.render([], {})
    assert "dnat" not in text and "masquerade" not in text
