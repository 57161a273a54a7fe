"""Membership with a fake clock: three agents exchanging probes in memory, a death seen by all in one window."""

from __future__ import annotations

import pytest

from metalhorn.common import errors
from metalhorn.lb.layer2 import membership

ADDR = {"n1": ("198.18.0.11", 7946), "n2": ("198.18.0.12", 7946), "n3": ("198.18.0.13", 7946)}
SETTINGS = membership.Settings(interval=0.1)


class Net:
    """Three MembershipStates wired by an in-memory network that can lose a node."""

    def __init__(self) -> None:
        self.now = 0.0
        self.nodes = {n: membership.MembershipState(n, now=0.0, settings=SETTINGS) for n in ADDR}
        for s in self.nodes.values():
            s.set_peers(ADDR)
        self.dead: set[str] = set()
        self.by_addr = {a: n for n, a in ADDR.items()}

    def step(self, dt: float = 0.01) -> None:
        self.now = round(self.now + dt, 6)
        for name, state in self.nodes.items():
            if name in self.dead:
                continue
            for addr, data in state.due(self.now):
                target = self.by_addr[addr]
                if target in self.dead:
                    continue
                ack = self.nodes[target].receive(data, self.now)
                if ack is not None:
                    state.receive(ack, self.now)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.01)):
            self.step()


def test_probe_codec_round_trip_and_junk() -> None:
    for p in (membership.Probe(membership.Kind.PING, 7, "n1"), membership.Probe(membership.Kind.ACK, 8, "n2", False)):
        assert membership.decode(membership.encode(p)) == p
    for junk in (b"", b"XXXX\x01\x01\x00\x00\x00\x00\x01\x00", membership.encode(p)[:-1], membership.encode(p) + b"x"):
        with pytest.raises(errors.ProtocolError):
            membership.decode(junk)


def test_not_ready_for_one_window_then_everyone_healthy() -> None:
    net = Net()
    net.step()
    assert not net.nodes["n1"].ready(net.now)
    net.run(0.5)
    for s in net.nodes.values():
        assert s.ready(net.now)
        assert s.healthy(net.now) == {"n1", "n2", "n3"}


def test_a_dead_node_is_unhealthy_for_everyone_within_one_window() -> None:
    net = Net()
    net.run(1.0)
    net.dead.add("n2")
    died = net.now
    seen: dict[str, float] = {}
    for _ in range(200):
        net.step()
        for name in ("n1", "n3"):
            if name not in seen and "n2" not in net.nodes[name].healthy(net.now):
                seen[name] = net.now
    assert set(seen) == {"n1", "n3"}
    window = SETTINGS.window + SETTINGS.interval
    assert all(t - died <= window + 1e-9 for t in seen.values()), seen
    assert abs(seen["n1"] - seen["n3"]) <= SETTINGS.interval + 1e-9


def test_a_node_that_returns_is_healthy_after_its_first_probe() -> None:
    net = Net()
    net.run(1.0)
    net.dead.add("n3")
    net.run(1.0)
    assert "n3" not in net.nodes["n1"].healthy(net.now)
    net.dead.discard("n3")
    net.run(0.11)
    assert "n3" in net.nodes["n1"].healthy(net.now)


def test_a_restarted_node_counts_only_once_it_is_ready() -> None:
    net = Net()
    net.run(1.0)
    assert "n2" in net.nodes["n1"].healthy(net.now)
    net.nodes["n2"] = membership.MembershipState("n2", now=net.now, settings=SETTINGS)  # quick restart
    net.nodes["n2"].set_peers(ADDR)
    net.run(0.11)
    assert "n2" not in net.nodes["n1"].healthy(net.now), "warming up: its IPs stay with the others"
    net.run(0.3)
    assert net.nodes["n2"].ready(net.now)
    assert "n2" in net.nodes["n1"].healthy(net.now) and "n2" in net.nodes["n3"].healthy(net.now)


def test_pings_are_paced_by_the_interval_without_bursts_after_a_stall() -> None:
    s = membership.MembershipState("n1", now=0.0, settings=SETTINGS)
    s.set_peers(ADDR)
    assert len(s.due(0.0)) == 2
    assert s.due(0.05) == []
    assert len(s.due(0.1)) == 2
    assert len(s.due(5.0)) == 2  # after a stall: one round, not fifty
    assert s.due(5.01) == []


def test_strangers_are_neither_counted_nor_answered() -> None:
    s = membership.MembershipState("n1", now=0.0, settings=SETTINGS)
    s.set_peers(ADDR)
    stranger = membership.encode(membership.Probe(membership.Kind.PING, 1, "intruder"))
    assert s.receive(stranger, 0.5) is None
    assert s.healthy(0.5) == {"n1"}


def test_removed_peers_are_forgotten() -> None:
    s = membership.MembershipState("n1", now=0.0, settings=SETTINGS)
    s.set_peers(ADDR)
    s.receive(membership.encode(membership.Probe(membership.Kind.ACK, 1, "n2")), 0.1)
    assert "n2" in s.healthy(0.1)
    s.set_peers({"n1": ADDR["n1"], "n3": ADDR["n3"]})
    assert s.healthy(0.1) == {"n1"}


@pytest.mark.parametrize(("interval", "timeout"), [(0, None), (0.1, 0.1), (0.1, 0.05), (-1, None)])
def test_bad_settings_are_refused(interval: float, timeout: float | None) -> None:
    with pytest.raises(errors.InvalidArgument):
        membership.MembershipState("n1", now=0.0, settings=membership.Settings(interval=interval, timeout=timeout))
