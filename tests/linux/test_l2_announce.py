"""Layer-2 acceptance in a namespace lab: one MAC answers, traffic reaches endpoints, failover recovers.

Three nodes run ``metalhorn l2 announce`` for 198.18.0.100 and 2001:db8::100 with two endpoints (HTTP backends
in n1 and n2); the client asks with arping / ndisc6 / curl and listens with tcpdump.  Failover tests assert
recovery, never timing (bench/l2_failover measures that).
"""

from __future__ import annotations

import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import l2lab

TOOLS = ("arping", "ndisc6", "tcpdump", "nft", "curl")
ENDPOINTS = ("198.18.0.11:8080", "198.18.0.12:8080", "[2001:db8::11]:8080", "[2001:db8::12]:8080")
EXTRA = ("--health-interval", "0.2")


@pytest.fixture(scope="module")
def lab() -> Iterator[l2lab.Lab]:
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run ./scripts/test as root so it can apt-get them")
    with l2lab.Lab() as lab:
        for n in ("n1", "n2"):
            lab.start_backend(n)
        for n in l2lab.NODES:
            lab.start_announcer(n, endpoints=ENDPOINTS, extra=EXTRA)
        lab.wait_for(lambda: len(set(lab.arping(count=1))) == 1, what="an owner for the VIP")
        yield lab


def steady(lab: l2lab.Lab) -> None:
    """Every announcer running, every link up, one owner for each VIP."""
    for n in l2lab.NODES:
        lab.link(n, up=True)
        p = lab.announcers.get(n)
        if p is None or p.poll() is not None:
            lab.start_announcer(n, endpoints=ENDPOINTS, extra=EXTRA)
    lab.wait_for(lambda: len(set(lab.arping(count=2))) == 1, what="one owner again", timeout=20)


def recovers(lab: l2lab.Lab, vip: str = l2lab.VIP4, *, in_a_row: int = 3, timeout: float = 20.0) -> list[str]:
    """Requests from the client until ``in_a_row`` succeed consecutively; return those bodies."""
    ok: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(ok) < in_a_row:
        body = lab.http(vip, timeout=1.0)
        ok = [*ok, body] if body is not None else []
    assert len(ok) == in_a_row, f"requests to {vip} did not recover within {timeout} s"
    return ok


def test_arping_gets_replies_from_exactly_one_mac(lab: l2lab.Lab) -> None:
    macs = lab.arping(count=4)
    assert len(macs) >= 3, macs  # one lost reply at most
    assert len(set(macs)) == 1 and lab.node_of(macs[0]) in l2lab.NODES


def test_ndisc6_gets_answers_from_exactly_one_mac(lab: l2lab.Lab) -> None:
    lab.flush_client_neighbours()
    macs = lab.ndisc()
    assert macs, "no neighbour advertisement for the IPv6 VIP"
    assert len(set(macs)) == 1 and lab.node_of(macs[0]) in l2lab.NODES


def test_steady_state_capture_shows_no_second_node_answering(lab: l2lab.Lab) -> None:
    with l2lab.capture(lab, "client", "arp or (icmp6 and ip6[40] == 136)", name="steady") as pcap:
        lab.arping(count=5)
        lab.flush_client_neighbours()
        lab.ndisc()
        lab.http()
        lab.http(l2lab.VIP6)
    lines = l2lab.read_pcap(lab, pcap)
    arp_answers = {
        m for line in lines for m in re.findall(r"^\S+ ([0-9a-f:]{17}) > .*Reply 198\.18\.0\.100 is-at", line)
    }
    na_senders = {
        m
        for line in lines
        for m in re.findall(r"^\S+ ([0-9a-f:]{17}) > .*neighbor advertisement.*tgt is 2001:db8::100", line)
    }
    assert len(arp_answers) == 1, lines
    assert len(na_senders) == 1, lines


def test_http_to_the_vip_reaches_a_backend_in_a_node(lab: l2lab.Lab) -> None:
    bodies = {lab.http() for _ in range(6)}
    assert bodies <= {"n1", "n2"} and None not in bodies
    assert bodies == {"n1", "n2"}, "round robin over both endpoints"
    assert lab.http(l2lab.VIP6) in {"n1", "n2"}


def test_requests_still_succeed_with_one_of_two_endpoints_stopped(lab: l2lab.Lab) -> None:
    backend = next(p for p in lab.procs if "n2" in p.args and "-c" in p.args)  # type: ignore[operator]
    lab.stop(backend)
    try:
        recovers(lab, in_a_row=10)  # the health check takes n2 out of rotation
        bodies = [lab.http(timeout=2.0) for _ in range(10)]
        assert bodies == ["n1"] * 10
        assert set(recovers(lab, l2lab.VIP6, in_a_row=5)) == {"n1"}
    finally:
        lab.start_backend("n2")


def _garp_from(lines: list[str], mac: str) -> bool:
    request = re.compile(rf"^\S+ {mac} > ff:ff:ff:ff:ff:ff.*Request who-has 198\.18\.0\.100 tell 198\.18\.0\.100")
    reply = re.compile(rf"^\S+ {mac} > ff:ff:ff:ff:ff:ff.*Reply 198\.18\.0\.100 is-at {mac}")
    return any(request.search(x) for x in lines) and any(reply.search(x) for x in lines)


def _failover(lab: l2lab.Lab, fail: str) -> None:
    steady(lab)
    recovers(lab)
    old = lab.owner()
    assert old is not None
    with l2lab.capture(lab, "client", "arp or icmp6", name=f"failover-{fail}") as pcap:
        if fail == "sigkill":
            lab.stop(lab.announcers[old], signal.SIGKILL)
        else:
            lab.link(old, up=False)
        lab.wait_for(lambda: lab.owner() not in (None, old), what="another node answering ARP", timeout=20)
        new = lab.owner()
        recovers(lab)  # the client's cache was not flushed: gratuitous ARP moved it
        recovers(lab, l2lab.VIP6)
    lines = l2lab.read_pcap(lab, pcap)
    assert new is not None and new != old
    assert _garp_from(lines, lab.hosts[new].mac), "\n".join(lines)
    try:
        macs = set(lab.ndisc())
        assert len(macs) == 1 and lab.node_of(macs.pop()) != old
    finally:
        steady(lab)


def test_sigkill_of_the_owner_moves_the_vip(lab: l2lab.Lab) -> None:
    _failover(lab, "sigkill")


def test_link_down_of_the_owner_moves_the_vip(lab: l2lab.Lab) -> None:
    _failover(lab, "link-down")
