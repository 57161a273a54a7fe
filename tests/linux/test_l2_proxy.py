"""Delivery without nftables: the userspace proxy serves VIP:80, and the kernel still never answers ARP for it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import l2lab

ENDPOINTS = ("198.18.0.11:8080", "198.18.0.12:8080", "[2001:db8::11]:8080", "[2001:db8::12]:8080")


@pytest.fixture(scope="module")
def lab() -> Iterator[l2lab.Lab]:
    missing = [t for t in ("arping", "ndisc6", "curl") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run ./scripts/test as root so it can apt-get them")
    with l2lab.Lab() as lab:
        for n in ("n1", "n2"):
            lab.start_backend(n)
        for n in l2lab.NODES:
            lab.start_announcer(n, endpoints=ENDPOINTS, extra=("--delivery", "proxy", "--health-interval", "0.2"))
        lab.wait_for(lambda: len(set(lab.arping(count=1))) == 1, what="an owner for the VIP")
        yield lab


def test_proxy_reaches_both_endpoints_over_ipv4_and_ipv6(lab: l2lab.Lab) -> None:
    bodies = [lab.http() for _ in range(6)]
    assert set(bodies) == {"n1", "n2"}, bodies
    assert {lab.http(l2lab.VIP6) for _ in range(4)} == {"n1", "n2"}


def test_local_routes_do_not_make_the_kernels_answer_arp(lab: l2lab.Lab) -> None:
    macs = lab.arping(count=4)
    assert len(macs) >= 3 and len(set(macs)) == 1, macs
    lab.flush_client_neighbours()
    assert len(set(lab.ndisc())) == 1
