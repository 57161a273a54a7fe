"""The agent's LB runtime: the pure plan (config + services + nodes -> per-component wish), the reports, the
`/v1/lb/peers` view and `lb peers` table, and one runtime refresh against the real API app (in memory, fake
responders, no sockets but one loopback UDP probe socket)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import warnings
from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from metalhorn.common import errors, metrics
from metalhorn.control import client as client_mod
from metalhorn.control.agent import lb as lb_mod
from metalhorn.control.agent import lbplan
from metalhorn.control.api import app as app_mod
from metalhorn.control.api import context as context_mod
from metalhorn.control.cli import lb as cli_lb
from metalhorn.control.controllers import services
from metalhorn.lb import config
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

TOKEN = "t"
CONFIG = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan}
spec: {addresses: [198.18.0.200-198.18.0.210]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: routed}
spec: {addresses: [198.19.0.0/24]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lan}
spec: {ipAddressPools: [lan]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: routed}
spec: {ipAddressPools: [routed], communities: ["64512:100"]}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: tor}
spec: {myASN: 64512, peerASN: 64512, peerAddress: 198.18.0.254}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: rack2}
spec:
  myASN: 64512
  peerASN: 64512
  peerAddress: 198.18.0.253
  nodeSelectors: [{matchLabels: {rack: "2"}}]
"""


def service_record(name: str, ip: str, pool: str, *, endpoints: Iterable[str] = ("198.18.0.11:8080",)) -> Any:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]},
        "endpoints": list(endpoints),
    }
    return {
        "name": f"shop/{name}",
        "spec": {"document": doc},
        "status": {"state": "assigned", "ingress": [ip], "pool": pool},
    }


NODES = [
    {"name": "node-1", "spec": {"tags": ["rack=2", "ssd"], "zone": "z1"}, "status": {"address": "198.18.0.11"}},
    {"name": "node-2", "spec": {}, "status": {"address": "198.18.0.12"}},
]


def make_plan(node: str = "node-1") -> lbplan.Plan:
    return lbplan.plan(
        node=node,
        lb=config.parse_yaml(CONFIG),
        services=[
            service_record("web", "198.18.0.200", "lan"),
            service_record("api", "198.19.0.5", "routed"),
            {"name": "shop/waiting", "spec": {}, "status": {"state": "pending"}},
        ],
        nodes=NODES,
        interfaces=("eth0",),
        probe_port=7946,
    )


def test_plan_splits_l2_and_bgp_services_and_reads_node_labels() -> None:
    p = make_plan()
    assert set(p.l2) == {"shop/web"}
    web = p.l2["shop/web"]
    assert web.ips == (ipaddress.ip_address("198.18.0.200"),) and web.ports == (80,)  # TCP only
    assert [a.meta.name for a in web.advertisement_map[web.ips[0]]] == ["lan"]
    assert set(p.bgp_only) == {"shop/api"}
    assert {(str(v.ip), v.pool, v.service) for v in p.vips} == {
        ("198.18.0.200", "lan", "shop/web"),
        ("198.19.0.5", "routed", "shop/api"),
    }
    assert p.peers == {"node-1": ("198.18.0.11", 7946), "node-2": ("198.18.0.12", 7946)}
    assert p.labels == {
        "kubernetes.io/hostname": "node-1",
        "rack": "2",
        "ssd": "true",
        "topology.kubernetes.io/zone": "z1",
    }
    assert [n.name for n in p.nodes] == ["node-1", "node-2"] and all(n.interfaces == ("eth0",) for n in p.nodes)


def test_plan_skips_a_service_whose_document_does_not_parse() -> None:
    broken = service_record("bad", "198.18.0.201", "lan")
    broken["spec"]["document"]["spec"]["type"] = "ClusterIP"
    p = lbplan.plan(node="n", lb=config.parse_yaml(CONFIG), services=[broken], nodes=[], probe_port=1)
    assert not p.l2 and not p.vips and p.problems and "shop/bad" in p.problems[0]


@pytest.mark.parametrize(
    ("node", "established", "want"),
    [
        ("node-1", ["tor", "rack2"], {"shop/api": ["rack2", "tor"]}),
        ("node-1", ["tor"], {"shop/api": ["tor"]}),
        ("node-2", ["tor", "rack2"], {"shop/api": ["tor"]}),  # rack2 does not select node-2
        ("node-1", [], {}),
    ],
)
def test_bgp_report_names_established_peers_that_carry_a_vip(node: str, established: list[str], want: Any) -> None:
    p = make_plan(node)
    got = lbplan.bgp_report(config.parse_yaml(CONFIG), labels=p.labels, vips=p.vips, established=established)
    assert got == want


def test_l2_report_lists_services_with_an_owned_ip() -> None:
    p = make_plan()
    assert lbplan.l2_report(p.l2, [ipaddress.ip_address("198.18.0.200")]) == ["shop/web"]
    assert lbplan.l2_report(p.l2, [ipaddress.ip_address("198.18.0.201")]) == []


def test_default_router_id() -> None:
    assert str(lb_mod.default_router_id("n1", "198.18.0.11")) == "198.18.0.11"
    assert lb_mod.default_router_id("n1", "2001:db8::1") == lb_mod.default_router_id("n1", "::1")


def test_global_ipv6_prefers_the_announcing_interface(tmp_path: Any) -> None:
    table = tmp_path / "if_inet6"
    table.write_text(
        "fe800000000000000000000000000001 02 40 20 80 eth0\n"
        "20010db8000000000000000000000099 03 40 00 80 eth1\n"
        "20010db8000000000000000000000011 02 40 00 80 eth0\n"
    )
    assert str(lb_mod.global_ipv6(interfaces=("eth0",), table=str(table))) == "2001:db8::11"
    assert str(lb_mod.global_ipv6(table=str(table))) == "2001:db8::11"  # lowest when no interface is preferred
    assert lb_mod.global_ipv6(table=str(tmp_path / "missing")) is None


# -- the API view and the CLI table ------------------------------------------------------------------------------


class Env:
    def __init__(self) -> None:
        self.clock = fake_clock.FakeClock()
        self.store = store_kit.MemoryStore(clock=self.clock)
        self.controller = services.ServiceController(store=self.store, clock=self.clock)
        context = context_mod.Context(store=self.store, clock=self.clock, token=TOKEN, on_change=self._changed)
        self.app = app_mod.create_app(context)
        self.client = TestClient(self.app, headers={"Authorization": f"Bearer {TOKEN}"})

    def _changed(self, kind: str) -> None:
        if kind in services.WAKE_KINDS:
            self.controller.reconcile(services.KEY)


SESSION = {"peer": "tor", "address": "198.18.0.254:179", "state": "Established", "prefixes_advertised": 2}


def test_peers_view_lists_sessions_and_marks_stale_reports() -> None:
    env = Env()
    body = {"l2": [], "bgp": {}, "bgp_sessions": [{**SESSION, "established_at": env.clock.wall() - 75}]}
    assert env.client.put("/v1/lb/announcements/node-1", json=body).status_code == 200
    items = env.client.get("/v1/lb/peers").json()["items"]
    assert items == [
        {
            "node": "node-1",
            "peer": "tor",
            "address": "198.18.0.254:179",
            "state": "Established",
            "prefixes_advertised": 2,
            "established_at": env.clock.wall() - 75,
            "last_error": "",
            "flaps": 0,
            "stale": False,
        }
    ]
    table = cli_lb.peer_table(items, now=env.clock.wall())
    assert table.splitlines() == [
        "NODE    PEER  ADDRESS           STATE        PREFIXES  UP     LAST-ERROR",
        "node-1  tor   198.18.0.254:179  Established  2         1m15s  -",
    ]
    env.clock.advance(11.0)
    items = env.client.get("/v1/lb/peers").json()["items"]
    assert items[0]["stale"] is True
    assert "unknown (stale report)" in cli_lb.peer_table(items, now=env.clock.wall())
    bad = {"bgp_sessions": [{"peer": "tor", "prefixes_advertised": -1}]}
    assert env.client.put("/v1/lb/announcements/node-1", json=bad).status_code == 422


# -- one refresh of the runtime against the real app -----------------------------------------------------------


class FakeResponder:
    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.owned: frozenset[Any] = frozenset()
        self.counters = type("C", (), {"requests_answered": 3, "takeovers": 0, "announcements_sent": 0})()
        self.closed = False

    def set_owned(self, ips: Iterable[Any]) -> None:
        self.owned = frozenset(ips)
        self.counters.takeovers += 1

    def close(self) -> None:
        self.closed = True


async def test_runtime_refresh_announces_what_it_owns_and_reports_it() -> None:
    env = Env()
    l2_only = CONFIG.split("---\napiVersion: metallb.io/v1beta2", maxsplit=1)[0]  # no BGP peers: no sessions
    env.client.post("/v1/lb/apply", json={"documents": config.load_yaml(l2_only)})
    env.client.post("/v1/lb/apply", json={"documents": [service_record("web", "", "")["spec"]["document"]]})
    env.client.post("/v1/agents/node-1/sync", json={"address": "127.0.0.1", "disks": {}})
    target = client_mod.Target(url="http://manager", token=TOKEN)
    api = client_mod.AsyncClient(target, transport=httpx.ASGITransport(app=env.app))
    responders: list[FakeResponder] = []

    def open_responder(interface: str) -> Any:
        responders.append(FakeResponder(interface))
        return responders[-1]

    registry = metrics.Registry()
    settings = lb_mod.LbSettings(
        node="node-1", listen_ip="127.0.0.1", interfaces=("eth0",), probe_port=0, delivery="none"
    )
    runtime = lb_mod.LbRuntime(
        settings, api=api, clock=env.clock, registry=registry, open_responder=open_responder, link_is_up=lambda _: True
    )
    try:
        await runtime.start()
        env.clock.advance(1.0)  # past the membership warm-up: this node's view counts
        await runtime.refresh()
        assert runtime.announcer is not None and runtime.membership is not None
        runtime.announcer.on_membership(runtime.membership.healthy(), ready=runtime.membership.ready())
        assert [str(ip) for ip in responders[0].owned] == ["198.18.0.200"]
        await runtime.refresh()  # reports what it owns now
        web = env.client.get("/v1/lb/services/shop/web").json()
        assert web["status"]["announced_by"] == [{"node": "node-1", "mode": "l2", "peers": []}]
        text = registry.render()
        assert 'metalhorn_lb_owned_ips{node="node-1"} 1' in text
        assert 'metalhorn_lb_requests_answered_total{node="node-1"} 3' in text
        assert 'metalhorn_lb_takeovers_total{node="node-1"} 1' in text
    finally:
        await runtime.close()
        await api.aclose()
    assert responders[0].closed
    report = env.client.get("/v1/lb/announcements").json()["items"][0]["status"]
    assert report["l2"] == [] and report["bgp_sessions"] == []


class DownManager:
    """An API whose every call fails, as when the manager is away."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_lb_config(self) -> Any:
        self.calls += 1
        raise errors.Unavailable("manager away")

    async def put_announcements(self, node: str, report: Any) -> Any:
        raise errors.Unavailable("manager away")


async def test_runtime_failures_are_counted_and_retried_never_raised() -> None:
    api = DownManager()
    registry = metrics.Registry()
    settings = lb_mod.LbSettings(node="node-1", listen_ip="127.0.0.1", delivery="none", refresh_interval=0.001)
    fake_api: Any = api
    runtime = lb_mod.LbRuntime(settings, api=fake_api, clock=fake_clock.FakeClock(), registry=registry)
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    for _ in range(1000):
        if api.calls >= 3:
            break
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert api.calls >= 3 and "manager away" in runtime.last_error
    assert 'metalhorn_lb_refresh_errors_total{node="node-1"} ' in registry.render()
    await runtime.close()  # the final empty report fails too: swallowed


async def test_a_taken_probe_port_is_retried_without_leaking() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        settings = lb_mod.LbSettings(
            node="n", listen_ip="127.0.0.1", interfaces=("eth0",), probe_port=taken.getsockname()[1], delivery="none"
        )
        api: Any = DownManager()
        runtime = lb_mod.LbRuntime(settings, api=api, clock=fake_clock.FakeClock(), registry=metrics.Registry())
        for _ in range(2):
            with pytest.raises(errors.InvalidArgument):
                await runtime.start()
            assert runtime.membership is None and runtime.announcer is None
    finally:
        taken.close()
    await runtime.start()  # the port is free now
    assert runtime.membership is not None and runtime.announcer is not None
    await runtime.close()
