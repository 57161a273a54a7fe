"""Speaker and routes: MetalLB advertisement semantics per peer, and the speaker's sessions (active and passive)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from metalhorn.lb import config as lb_config
from metalhorn.lb.bgp import fsm, routes, speaker
from metalhorn.lb.bgp.messages import attributes, update
from metalhorn.testing.bgp_peer import ScriptedBgpPeer
from metalhorn.testing.clock import FakeClock

CONFIG = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: vips}
spec: {addresses: [198.19.0.0/24, "2001:db8:100::/120"]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: other}
spec: {addresses: [198.19.1.0/24]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: main}
spec:
  ipAddressPools: [vips]
  communities: ["64512:100", "large:64512:1:2"]
  localPref: 200
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: agg}
spec:
  ipAddressPools: [other]
  aggregationLength: 24
  peers: [ibgp]
  nodeSelectors: [{matchLabels: {rack: a}}]
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: ibgp}
spec: {myASN: 64512, peerASN: 64512, peerAddress: 127.0.0.1, peerPort: PORT, holdTime: 9s}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: ebgp}
spec: {myASN: 64513, peerASN: 64512, peerAddress: 127.0.0.2, nodeSelectors: [{matchLabels: {rack: a}}]}
"""

VIP = ipaddress.ip_address("198.19.0.10")
VIP6 = ipaddress.ip_address("2001:db8:100::10")
OTHER = ipaddress.ip_address("198.19.1.7")


def parse(port: int = 179) -> lb_config.LbConfig:
    return lb_config.parse_yaml(CONFIG.replace("PORT", str(port)))


def peer(config: lb_config.LbConfig, name: str) -> lb_config.BGPPeer:
    return next(p for p in config.bgp_peers if p.meta.name == name)


VIPS = (routes.Vip(VIP, "vips"), routes.Vip(VIP6, "vips"), routes.Vip(OTHER, "other"))


@pytest.mark.parametrize(
    ("peer_name", "labels", "expected"),
    [
        pytest.param("ibgp", {}, {"198.19.0.10/32": 200, "2001:db8:100::10/128": 200}, id="ibgp-other-rack"),
        pytest.param(
            "ibgp",
            {"rack": "a"},
            {"198.19.0.10/32": 200, "2001:db8:100::10/128": 200, "198.19.1.0/24": None},
            id="ibgp-rack-a-gets-aggregate",
        ),
        pytest.param("ebgp", {}, {}, id="ebgp-not-selecting-node"),
        pytest.param(
            "ebgp", {"rack": "a"}, {"198.19.0.10/32": None, "2001:db8:100::10/128": None}, id="ebgp-no-local-pref"
        ),
    ],
)
def test_routes_for_peer(peer_name: str, labels: dict[str, str], expected: dict[str, int | None]) -> None:
    config = parse()
    got = routes.routes_for_peer(config, peer(config, peer_name), labels=routes.node_labels("n1", labels), vips=VIPS)
    assert {str(r.prefix): r.local_pref for r in got} == expected
    for route in got:
        if route.prefix.prefixlen in (32, 128):
            assert route.communities == (attributes.community(64512, 100),)
            assert route.large_communities == (attributes.LargeCommunity(64512, 1, 2),)


def test_vips_fold_into_one_aggregate_and_communities_merge() -> None:
    config = parse()
    vips = [routes.Vip(ipaddress.ip_address(f"198.19.1.{i}"), "other") for i in (1, 2, 3)]
    labels = routes.node_labels("n1", {"rack": "a"})
    got = routes.routes_for_peer(config, peer(config, "ibgp"), labels=labels, vips=vips)
    assert [str(r.prefix) for r in got] == ["198.19.1.0/24"]
    merged = routes._merge(
        routes.Route(ipaddress.ip_network("198.19.0.0/24"), communities=(1,), local_pref=10),
        routes.Route(ipaddress.ip_network("198.19.0.0/24"), communities=(2,), local_pref=20),
    )
    assert merged.communities == (1, 2) and merged.local_pref == 20
    assert (
        routes.pool_of(config, OTHER) == "other"
        and routes.pool_of(config, ipaddress.ip_address("198.19.255.1")) is None
    )


def test_session_config_from_a_bgp_peer() -> None:
    config = parse(1790)
    built = speaker.session_config(peer(config, "ibgp"), router_id=ipaddress.IPv4Address("198.18.0.11"), password="x")
    assert built is not None
    assert (built.peer_port, built.hold_time, built.keepalive_time, built.internal) == (1790, 9, 3, True)
    assert built.password == "x" and built.peer_asn == 64512


async def wait_until(check: object, *, tries: int = 200) -> None:
    for _ in range(tries):
        if callable(check) and check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_speaker_announces_and_withdraws_as_vips_and_config_change() -> None:
    peer_ = ScriptedBgpPeer()
    port = await peer_.listen()
    config = parse(port)
    node = speaker.Speaker(node="n1", router_id=ipaddress.IPv4Address("198.18.0.11"), clock=FakeClock())
    try:
        node.set_config(config.bgp_peers)
        assert [s.name for s in node.status()] == ["ibgp"]  # ebgp selects rack=a only
        node.set_advertisements(config, [routes.Vip(VIP, "vips")])
        await peer_.establish()
        first = await peer_.receive_until(update.Update)
        assert isinstance(first, update.Update) and first.nlri == (ipaddress.ip_network(VIP),)
        await wait_until(lambda: node.status()[0].prefixes_advertised == 1)

        node.set_advertisements(config, [])  # the service went away
        gone = await peer_.receive_until(update.Update, limit=5)
        while isinstance(gone, update.Update) and gone.is_end_of_rib:
            gone = await peer_.receive_until(update.Update, limit=5)
        assert isinstance(gone, update.Update) and gone.withdrawn == (ipaddress.ip_network(VIP),)

        node.set_config([])  # the peer was deleted: Cease
        assert await peer_.closed()
        assert node.status() == ()
    finally:
        await node.close()
        await peer_.close()


async def test_passive_speaker_adopts_the_peers_connection() -> None:
    config = parse(1)
    node = speaker.Speaker(
        node="n1", router_id=ipaddress.IPv4Address("198.18.0.11"), clock=FakeClock(), listen_port=0, passive=True
    )
    await node.start()
    peer_ = ScriptedBgpPeer()
    try:
        node.set_config(config.bgp_peers)
        node.set_advertisements(config, [routes.Vip(VIP, "vips")])
        port = next(p for p in node.listen_ports)
        await peer_.connect("127.0.0.1", port)
        await peer_.establish()
        await wait_until(lambda: node.sessions()["ibgp"].state is fsm.State.ESTABLISHED)
        first = await peer_.receive_until(update.Update)
        assert isinstance(first, update.Update) and first.nlri == (ipaddress.ip_network(VIP),)
    finally:
        await node.close()
        await peer_.close()
