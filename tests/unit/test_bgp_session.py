"""The asyncio BGP session against a scripted in-process peer on loopback; timers run on a fake clock."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest

from metalhorn.lb.bgp import fsm, routes, session
from metalhorn.lb.bgp.messages import attributes, capabilities, errors, header, nlri, simple, update
from metalhorn.lb.bgp.messages import open_message as om
from metalhorn.testing.bgp_peer import ScriptedBgpPeer
from metalhorn.testing.clock import FakeClock

LOCAL = ipaddress.IPv4Address("127.0.0.1")
V6_HOP = ipaddress.IPv6Address("2001:db8::11")
VIP = ipaddress.IPv4Network("198.19.0.10/32")
VIP2 = ipaddress.IPv4Network("198.19.0.11/32")
VIP6 = ipaddress.IPv6Network("2001:db8:100::10/128")


def make_config(port: int, *, internal: bool = True, **changes: object) -> session.SessionConfig:
    base: dict[str, object] = {
        "name": "test-peer",
        "peer_address": LOCAL,
        "peer_port": port,
        "local_asn": 64512 if internal else 64513,
        "peer_asn": 64512,
        "internal": internal,
        "router_id": ipaddress.IPv4Address("198.18.0.11"),
        "hold_time": 90,
        "next_hop_v6": V6_HOP,
    }
    base.update(changes)
    return session.SessionConfig(**base)  # type: ignore[arg-type]


class Lab:
    def __init__(self, peer: ScriptedBgpPeer, clock: FakeClock) -> None:
        self.peer = peer
        self.clock = clock
        self.session: session.Session | None = None

    def start(self, **changes: object) -> session.Session:
        internal = bool(changes.pop("internal", True))
        self.session = session.Session(make_config(self.peer.port, internal=internal, **changes), clock=self.clock)
        self.session.start()
        return self.session

    async def established(self, *wanted: routes.Route, **changes: object) -> session.Session:
        sess = self.start(**changes)
        sess.set(wanted)
        await self.peer.establish()
        await wait_for_state(sess, fsm.State.ESTABLISHED)
        return sess


async def wait_for_state(sess: session.Session, state: fsm.State) -> None:
    for _ in range(200):
        if sess.state is state:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"session is {sess.state.value}, expected {state.value}")


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    peer = ScriptedBgpPeer()
    await peer.listen()
    it = Lab(peer, FakeClock())
    try:
        yield it
    finally:
        if it.session is not None:
            await it.session.stop(linger=0.2)
        await peer.close()


async def updates_until_eor(peer: ScriptedBgpPeer, families: int = 2) -> list[update.Update]:
    out: list[update.Update] = []
    seen = 0
    for _ in range(100):
        message = await peer.receive_until(update.Update)
        assert isinstance(message, update.Update)
        if message.is_end_of_rib:
            seen += 1
            if seen == families:
                return out
        else:
            out.append(message)
    raise AssertionError("no End-of-RIB")


def announced(messages: list[update.Update]) -> dict[nlri.Prefix, attributes.PathAttributes]:
    out: dict[nlri.Prefix, attributes.PathAttributes] = {}
    for message in messages:
        for prefix in message.nlri:
            out[prefix] = message.attributes
        reach = message.attributes.mp_reach
        if reach is not None:
            for prefix in reach.nlri:
                out[prefix] = message.attributes
    return out


def withdrawn(messages: list[update.Update]) -> set[nlri.Prefix]:
    out: set[nlri.Prefix] = set()
    for message in messages:
        out.update(message.withdrawn)
        if message.attributes.mp_unreach is not None:
            out.update(message.attributes.mp_unreach.withdrawn)
    return out


async def test_open_carries_our_capabilities_and_routes_follow_with_end_of_rib(lab: Lab) -> None:
    route = routes.Route(VIP, communities=(attributes.community(64512, 100),), local_pref=200)
    sess = lab.start()
    sess.set([route, routes.Route(VIP6)])
    ours = await lab.peer.establish()
    assert isinstance(ours, om.Open)
    assert ours.asn == 64512 and ours.hold_time == 90 and ours.bgp_id == ipaddress.IPv4Address("198.18.0.11")
    assert ours.families() == {(1, 1), (2, 1)} and ours.route_refresh and ours.four_octet_as
    got = announced(await updates_until_eor(lab.peer))
    assert set(got) == {VIP, VIP6}
    v4 = got[VIP]
    assert v4.origin is attributes.Origin.IGP and v4.as_path == () and v4.local_pref == 200
    assert v4.communities == (attributes.community(64512, 100),) and v4.next_hop == LOCAL
    v6 = got[VIP6]
    assert v6.mp_reach is not None and v6.mp_reach.next_hops == (V6_HOP,) and v6.local_pref == 100
    assert sess.advertised == {VIP, VIP6}
    assert sess.status().state == "Established" and sess.status().prefixes_advertised == 2


async def test_set_sends_only_the_difference(lab: Lab) -> None:
    sess = await lab.established(routes.Route(VIP), routes.Route(VIP2))
    assert set(announced(await updates_until_eor(lab.peer))) == {VIP, VIP2}

    large = attributes.LargeCommunity(64512, 1, 2)
    sess.set([routes.Route(VIP, large_communities=(large,)), routes.Route(VIP6)])
    changes = [await lab.peer.receive_until(update.Update) for _ in range(3)]
    assert withdrawn(changes) == {VIP2}
    got = announced(changes)
    assert set(got) == {VIP, VIP6} and got[VIP].large_communities == (large,)

    sess.set([routes.Route(VIP, large_communities=(large,)), routes.Route(VIP6)])  # same wish: nothing sent
    lab.peer.send(simple.Keepalive())
    sess.set([])
    last = await lab.peer.receive_until(update.Update)
    more = await lab.peer.receive_until(update.Update)
    assert withdrawn([last, more]) == {VIP, VIP6} and not announced([last, more])
    assert sess.advertised == frozenset()


async def test_ebgp_prepends_our_as_and_sends_no_local_pref(lab: Lab) -> None:
    await lab.established(routes.Route(VIP, local_pref=300), internal=False)
    got = announced(await updates_until_eor(lab.peer))
    assert got[VIP].as_path == attributes.as_sequence(64513) and got[VIP].local_pref is None


async def test_ten_thousand_prefixes_are_packed_into_few_updates(lab: Lab) -> None:
    many = [routes.Route(ipaddress.IPv4Network((0xC6120000 + i, 32))) for i in range(10_000)]
    sess = await lab.established(*many)
    messages = await updates_until_eor(lab.peer)
    assert len(announced(messages)) == 10_000 and len(messages) < 20
    assert sess.status().prefixes_advertised == 10_000


@pytest.mark.parametrize(
    ("raw", "code", "subcode"),
    [
        pytest.param(b"\x00" * 16 + b"\x00\x13\x04", 1, 1, id="bad-marker"),
        pytest.param(header.MARKER + b"\x00\x14\x04\x00", 1, 2, id="long-keepalive"),
        pytest.param(header.MARKER + b"\x00\x13\x09", 1, 3, id="bad-type"),
        pytest.param(
            header.encode(header.MessageType.UPDATE, b"\x00\x00\x00\x04\x40\x01\x01\x07"), 3, 6, id="bad-origin"
        ),
        pytest.param(header.encode(header.MessageType.OPEN, bytes(10)), 5, 3, id="open-in-established"),
    ],
)
async def test_malformed_message_gets_the_notification_and_a_reset_with_backoff(
    lab: Lab, raw: bytes, code: int, subcode: int
) -> None:
    sess = await lab.established(routes.Route(VIP))
    await updates_until_eor(lab.peer)
    lab.peer.send(raw)
    reply = await lab.peer.receive_until(simple.Notification)
    assert isinstance(reply, simple.Notification)
    assert (reply.code, reply.subcode) == (code, subcode)
    assert await lab.peer.closed()
    assert sess.state is fsm.State.IDLE and sess.advertised == frozenset()
    assert "bad message" in sess.status().last_error or "sent" in sess.status().last_error

    lab.clock.advance(0.5)
    sess.poll_timers()
    assert sess.state is fsm.State.IDLE  # backoff not over yet
    lab.clock.advance(0.6)
    sess.poll_timers()
    await lab.peer.accept()
    await lab.peer.establish()
    await wait_for_state(sess, fsm.State.ESTABLISHED)
    assert set(announced(await updates_until_eor(lab.peer))) == {VIP}
    assert sess.status().flaps == 1


async def test_wrong_peer_as_is_refused_with_bad_peer_as(lab: Lab) -> None:
    sess = lab.start(peer_asn=65000, internal=False)
    await lab.peer.accept()
    assert isinstance(await lab.peer.receive(), om.Open)
    lab.peer.send(lab.peer.open_message())
    reply = await lab.peer.receive_until(simple.Notification)
    assert isinstance(reply, simple.Notification)
    assert (reply.code, reply.subcode) == (errors.ErrorCode.OPEN_MESSAGE, errors.OpenSubcode.BAD_PEER_AS)
    assert sess.state is fsm.State.IDLE


async def test_keepalives_and_hold_timer_run_on_the_injected_clock(lab: Lab) -> None:
    lab.peer.hold_time = 9
    sess = await lab.established()
    await updates_until_eor(lab.peer)
    lab.clock.advance(3)  # keepalive interval: a third of the negotiated 9 s
    sess.poll_timers()
    assert isinstance(await lab.peer.receive(), simple.Keepalive)
    lab.peer.send(simple.Keepalive())
    await asyncio.sleep(0.02)
    lab.clock.advance(8)  # the peer's keepalive restarted the hold timer at t=3: not expired at t=11
    sess.poll_timers()
    assert sess.state is fsm.State.ESTABLISHED
    lab.clock.advance(1.5)
    sess.poll_timers()
    reply = await lab.peer.receive_until(simple.Notification)
    assert isinstance(reply, simple.Notification) and reply.code == errors.ErrorCode.HOLD_TIMER_EXPIRED
    assert sess.state is fsm.State.IDLE


async def test_route_refresh_resends_the_adj_rib_out(lab: Lab) -> None:
    await lab.established(routes.Route(VIP), routes.Route(VIP6))
    await updates_until_eor(lab.peer)
    lab.peer.send(simple.RouteRefresh(nlri.Afi.IPV4, nlri.Safi.UNICAST))
    again = await lab.peer.receive_until(update.Update)
    assert isinstance(again, update.Update) and again.nlri == (VIP,)


async def test_only_negotiated_families_are_sent(lab: Lab) -> None:
    sess = lab.start()
    sess.set([routes.Route(VIP), routes.Route(VIP6)])
    only_v4 = lab.peer.open_message(capabilities_=(capabilities.Multiprotocol(nlri.Afi.IPV4, nlri.Safi.UNICAST),))
    await lab.peer.establish(open_=only_v4)
    first = await lab.peer.receive_until(update.Update)
    eor = await lab.peer.receive_until(update.Update)
    assert isinstance(first, update.Update) and isinstance(eor, update.Update)
    assert first.nlri == (VIP,) and eor.is_end_of_rib
    assert sess.advertised == {VIP}


async def test_peer_notification_and_close_reset_the_session(lab: Lab) -> None:
    sess = await lab.established(routes.Route(VIP))
    await updates_until_eor(lab.peer)
    lab.peer.send(simple.Notification(errors.ErrorCode.CEASE, errors.CeaseSubcode.ADMINISTRATIVE_RESET))
    assert await lab.peer.closed()
    await wait_for_state(sess, fsm.State.IDLE)
    assert "ADMINISTRATIVE_RESET" in sess.status().last_error


async def test_stop_sends_cease(lab: Lab) -> None:
    sess = await lab.established()
    await updates_until_eor(lab.peer)
    await sess.stop()
    reply = await lab.peer.receive_until(simple.Notification)
    assert isinstance(reply, simple.Notification) and reply.code == errors.ErrorCode.CEASE
    assert sess.state is fsm.State.IDLE
    lab.clock.advance(100)
    sess.poll_timers()
    assert sess.state is fsm.State.IDLE  # a stopped session does not restart
    lab.session = None


def test_md5sig_layout_matches_linux_struct_tcp_md5sig() -> None:
    raw = session.md5sig(ipaddress.IPv4Address("198.18.0.1"), "secret")
    assert len(raw) == 216
    assert raw[2:4] == b"\x00\x00" and raw[4:8] == bytes([198, 18, 0, 1])
    assert raw[128:130] == b"\x00\x00" and int.from_bytes(raw[130:132], "little") == 6
    assert raw[136:142] == b"secret" and raw[142:] == bytes(74)
    raw6 = session.md5sig(ipaddress.IPv6Address("2001:db8::1"), "x")
    assert raw6[8:24] == ipaddress.IPv6Address("2001:db8::1").packed
