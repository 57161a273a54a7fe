"""Owner election: deterministic, stable when nodes join or leave, even over many IPs, MetalLB eligibility."""

from __future__ import annotations

import collections
import hashlib
import ipaddress

import pytest

from metalhorn.lb import config, election, fields

IPS = [ipaddress.ip_address(f"198.18.0.{i}") for i in range(1, 101)]
NODES = [election.Node(f"node-{i}", interfaces=("eth0",)) for i in range(1, 4)]
NAMES = {n.name for n in NODES}
EVERY = (election.EVERYWHERE,)


def adv(*, nodes: dict[str, str] | None = None, interfaces: tuple[str, ...] = ()) -> config.L2Advertisement:
    selectors = (fields.LabelSelector(tuple(sorted(nodes.items()))),) if nodes is not None else ()
    return config.L2Advertisement(
        meta=fields.Meta("L2Advertisement", "metallb-system", "a"), node_selectors=selectors, interfaces=interfaces
    )


def owners(nodes: list[election.Node], healthy: set[str], ips: list[ipaddress.IPv4Address]) -> dict[object, str]:
    result = election.assign(ips, nodes=nodes, healthy=healthy, advertisements_for=dict.fromkeys(ips, EVERY))
    return {ip: a.node for ip, a in result.items()}


def test_owner_is_first_by_sha256_of_node_hash_ip() -> None:
    ip = ipaddress.ip_address("198.18.0.100")
    expected = min(NAMES, key=lambda n: hashlib.sha256(f"{n}#198.18.0.100".encode()).digest())
    a = election.owner(ip, nodes=NODES, healthy=NAMES, advertisements=EVERY)
    assert a is not None and a.node == expected and a.interfaces == ("eth0",)
    assert election.candidates(ip, NAMES)[0] == expected


def test_same_inputs_same_owner_in_any_order() -> None:
    assert owners(NODES, NAMES, IPS) == owners(list(reversed(NODES)), set(reversed(sorted(NAMES))), IPS)


def test_node_joining_moves_only_the_ips_it_now_wins() -> None:
    before = owners(NODES, NAMES, IPS)
    newcomer = election.Node("node-4", interfaces=("eth0",))
    after = owners([*NODES, newcomer], NAMES | {"node-4"}, IPS)
    moved = {ip for ip in IPS if before[ip] != after[ip]}
    assert moved, "with 100 IPs a fourth node wins some"
    assert all(after[ip] == "node-4" for ip in moved)
    assert all(election.candidates(ip, NAMES | {"node-4"})[0] == "node-4" for ip in moved)


def test_node_leaving_moves_only_its_own_ips() -> None:
    before = owners(NODES, NAMES, IPS)
    after = owners(NODES, NAMES - {"node-2"}, IPS)
    for ip in IPS:
        if before[ip] != "node-2":
            assert after[ip] == before[ip]
        else:
            assert after[ip] == election.candidates(ip, NAMES - {"node-2"})[0]


def test_even_spread_over_100_ips() -> None:
    counts = collections.Counter(owners(NODES, NAMES, IPS).values())
    assert set(counts) == NAMES
    # 100 IPs over 3 nodes: 33 each on average; sha256 keeps every node well within [20, 47].
    assert all(20 <= c <= 47 for c in counts.values()), counts


def test_unhealthy_nodes_own_nothing_and_no_healthy_node_means_no_owner() -> None:
    assert set(owners(NODES, {"node-1"}, IPS).values()) == {"node-1"}
    assert owners(NODES, set(), IPS) == {}
    assert owners(NODES, {"stranger"}, IPS) == {}


@pytest.mark.parametrize(
    ("advertisements", "eligible", "interfaces"),
    [
        pytest.param((adv(),), {"node-1", "node-2", "node-3"}, None, id="no-selectors-everyone"),
        pytest.param((adv(nodes={"zone": "a"}),), {"node-1"}, ("eth0",), id="node-selector"),
        pytest.param((adv(interfaces=("eth1",)),), {"node-2"}, ("eth1",), id="interface-only-on-node-2"),
        pytest.param((adv(interfaces=("eth9",)),), set(), (), id="interface-nowhere"),
        pytest.param(
            (adv(nodes={"zone": "a"}), adv(interfaces=("eth1",))), {"node-1", "node-2"}, None, id="union-of-two"
        ),
        pytest.param((), set(), (), id="no-advertisement-no-announcement"),
    ],
)
def test_eligibility_follows_l2_advertisements(
    advertisements: tuple[config.L2Advertisement, ...], eligible: set[str], interfaces: tuple[str, ...] | None
) -> None:
    nodes = [
        election.Node("node-1", labels=(("zone", "a"),), interfaces=("eth0",)),
        election.Node("node-2", labels=(("zone", "b"),), interfaces=("eth0", "eth1")),
        election.Node("node-3", labels=(("zone", "b"),), interfaces=("eth0",)),
    ]
    result = election.assign(IPS, nodes=nodes, healthy=NAMES, advertisements_for=dict.fromkeys(IPS, advertisements))
    assert {a.node for a in result.values()} == eligible
    if interfaces is not None:
        assert all(a.interfaces == interfaces for a in result.values())


def test_advertisements_for_picks_the_pool_holding_the_ip() -> None:
    cfg = config.parse_yaml(
        """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan}
spec: {addresses: [198.18.0.100-198.18.0.110]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: other}
spec: {addresses: [198.18.0.200/30]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lan-only}
spec: {ipAddressPools: [lan], interfaces: [eth0]}
"""
    )
    advs = election.advertisements_for(cfg, ipaddress.ip_address("198.18.0.101"))
    assert [a.meta.name for a in advs] == ["lan-only"]
    assert election.advertisements_for(cfg, ipaddress.ip_address("198.18.0.201")) == ()
    assert election.advertisements_for(cfg, ipaddress.ip_address("198.18.0.50")) == ()


def test_owned_by_lists_a_nodes_ips_with_interfaces() -> None:
    result = election.assign(IPS, nodes=NODES, healthy=NAMES, advertisements_for=dict.fromkeys(IPS, EVERY))
    mine = election.owned_by(result, "node-1")
    assert mine and all(v == ("eth0",) for v in mine.values())
    assert sum(len(election.owned_by(result, n)) for n in NAMES) == len(IPS)
