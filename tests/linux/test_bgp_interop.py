"""metalhorn's BGP speaker against FRR (bgpd + zebra), BIRD 2 and GoBGP, each as the router of a netns lab.

One lab per router (module-scoped): three speakers n1..n3 (``metalhorn bgp speak`` processes) announce a VIP /32
and /128. FRR and GoBGP peer over iBGP (so LOCAL_PREF travels), BIRD over eBGP. GoBGP installs no kernel routes
without zebra, so the kernel ECMP and client checks run against FRR and BIRD, and GoBGP's RIB is checked for
the three paths instead. Every wait is bounded; nothing asserts how fast things happen.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.linux import bgplab
from tests.linux.bgplab import NODES, PASSWORD, VIP4, VIP6, node_v4, node_v6

LABS = {"frr": ("f", 64512), "bird": ("b", 64513), "gobgp": ("g", 64512)}
TOOLS = {"frr": ("vtysh", "/usr/lib/frr/bgpd"), "bird": ("bird", "birdc"), "gobgp": ("gobgpd", "gobgp")}
SPEAKERS = NODES[:3]
PREFIXES = (f"{VIP4}/32", f"{VIP6}/128")


def _hops(prefix: str) -> set[str]:
    return {node_v6(n) if ":" in prefix else node_v4(n) for n in SPEAKERS}


@pytest.fixture(scope="module", params=list(LABS))
def lab(request: pytest.FixtureRequest) -> Iterator[bgplab.Lab]:
    router = request.param
    missing = [t for t in TOOLS[router] if not shutil.which(t) and not os.path.exists(t)]
    if missing:
        pytest.skip(f"{router}: missing {missing}; scripts/test installs frr, bird2 and gobgpd")
    tag, asn = LABS[router]
    it = bgplab.Lab(router, tag=tag, node_asn=asn)
    try:
        it.setup()
        for node in SPEAKERS:
            it.start_speaker(node)
            it.start_web(node)
        yield it
    finally:
        it.close()


def converge(lab: bgplab.Lab) -> None:
    """Bring the lab back to three announcing speakers (a previous test may have killed or changed one)."""
    for node in SPEAKERS:
        if not lab.speaker_running(node):
            lab.start_speaker(node)
    want = {node_v4(n) for n in SPEAKERS}
    bgplab.wait_for(lambda: want <= lab.established(), timeout=60, what="three Established sessions")
    for prefix in PREFIXES:
        bgplab.wait_for(
            lambda p=prefix: {path["next_hop"] for path in lab.rib(p)} == _hops(p),  # type: ignore[misc]
            timeout=15,
            what=f"three paths for {prefix}",
        )


def test_sessions_establish_and_vips_are_learned_with_attributes(lab: bgplab.Lab) -> None:
    converge(lab)
    for prefix in PREFIXES:
        paths = lab.rib(prefix)
        assert {p["next_hop"] for p in paths} == _hops(prefix)
        for path in paths:
            assert path["communities"] == ["64512:100"], path
            assert path["large_communities"] == ["64512:7:8"], path
            if lab.internal:
                assert path["local_pref"] == 250, path


def test_three_nodes_give_three_ecmp_next_hops_in_the_kernel(lab: bgplab.Lab) -> None:
    if lab.router == "gobgp":
        pytest.skip("gobgpd installs no kernel routes without zebra; its RIB paths are checked above")
    converge(lab)
    for prefix in PREFIXES:
        address = prefix.split("/")[0]
        got = bgplab.wait_for(
            lambda a=address, p=prefix: lab.kernel_next_hops(a) == _hops(p) and lab.kernel_next_hops(a),  # type: ignore[misc]
            timeout=10,
            what=f"ECMP kernel route for {prefix}",
        )
        assert got == _hops(prefix)


def test_client_reaches_the_service_through_the_vip(lab: bgplab.Lab) -> None:
    if lab.router == "gobgp":
        pytest.skip("gobgpd installs no kernel routes without zebra")
    converge(lab)
    bgplab.wait_for(lambda: lab.kernel_next_hops(VIP4), timeout=10, what="kernel route")
    for url in (f"http://{VIP4}:8080/", f"http://[{VIP6}]:8080/"):
        answer = bgplab.wait_for(lambda u=url: lab.fetch(u), timeout=10, what=f"GET {url}")  # type: ignore[misc]
        assert answer in SPEAKERS


def test_removing_the_advertisement_withdraws_the_routes(lab: bgplab.Lab) -> None:
    converge(lab)
    try:
        for node in SPEAKERS:
            lab.reconfigure_speaker(node, advertise=False)
        for prefix in PREFIXES:
            bgplab.wait_for(lambda p=prefix: lab.rib(p) == [], timeout=10, what=f"{prefix} withdrawn")  # type: ignore[misc]
        assert {node_v4(n) for n in SPEAKERS} <= lab.established()  # withdrawn, not disconnected
        if lab.router != "gobgp":
            bgplab.wait_for(lambda: not lab.kernel_next_hops(VIP4), timeout=10, what="kernel route gone")
    finally:
        for node in SPEAKERS:
            lab.reconfigure_speaker(node, advertise=True)
    converge(lab)


def test_sigkill_of_a_speaker_drops_its_next_hop_after_the_hold_time(lab: bgplab.Lab) -> None:
    converge(lab)
    lab.kill("speaker-n3")  # SIGKILL: no NOTIFICATION, no FIN from our code -- only the hold timer can tell
    survivors = {node_v4("n1"), node_v4("n2")}
    bgplab.wait_for(
        lambda: {p["next_hop"] for p in lab.rib(f"{VIP4}/32")} == survivors,
        timeout=12,
        what="n3's path gone after the 3 s hold time",
    )
    if lab.router != "gobgp":
        bgplab.wait_for(lambda: lab.kernel_next_hops(VIP4) == survivors, timeout=10, what="kernel ECMP of two")
    converge(lab)


def test_wrong_md5_password_never_establishes_and_the_right_one_does(lab: bgplab.Lab) -> None:
    n4 = node_v4("n4")
    try:
        lab.start_speaker("n4", password="not-the-secret", advertise=False)
        with pytest.raises(AssertionError, match="timed out"):
            bgplab.wait_for(lambda: n4 in lab.established(), timeout=6, what="n4 with a wrong password")
        lab.start_speaker("n4", password=PASSWORD, advertise=False)
        bgplab.wait_for(lambda: n4 in lab.established(), timeout=20, what="n4 with the right password")
    finally:
        lab.kill("speaker-n4")
