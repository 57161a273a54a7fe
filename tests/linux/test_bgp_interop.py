"""metalhorn's BGP speaker against FRR (bgpd + zebra), BIRD 2 and GoBGP, each as the router of a netns lab.

One lab per router (module-scoped): three speakers n1..n3 (``metalhorn bgp speak`` processes) announce a VIP /32
and /128. FRR and GoBGP peer over iBGP (so LOCAL_PREF travels), BIRD over eBGP. Every wait is bounded; nothing
asserts how fast things happen.

Kernel routes with GoBGP as the router. gobgpd installs nothing in the kernel by itself; GoBGP's way is its
``[zebra]`` client with an FRR zebra in the same namespace and ``use-multiple-paths`` (bgplab._start_gobgp). That
needs a gobgpd whose ZAPI client speaks this zebra's dialect, and the pairing on this machine does not:

- Debian bookworm ships gobgpd 3.10.0 and FRR 8.4.4. FRR 8.3 changed ZAPI interface messages to 16-byte
  (IFNAMSIZ) names; gobgpd 3.10 still reads 20 and, on the ZEBRA_INTERFACE_ADD that zebra sends for the
  loopback, panics ("slice bounds out of range [:4] with capacity 1", zebra.(*interfaceUpdateBody)
  .decodeFromBytes), taking the whole gobgpd down. No ``version`` / ``software-name`` setting avoids it.
- GoBGP fixed this in v3.18.0 (commit 5f01c74a, "Accommodate FRRouting interfaceNameSize changes"). A gobgpd
  3.18.0 built from that tag, with ``version = 6`` and ``software-name = "frr8.4"``, gives zebra all three paths
  and the kernel ``198.19.0.10 proto bgp`` with three nexthops (and the /128 likewise) -- tried here.

So ``bgplab.gobgp_zebra_problem()`` decides: with a gobgpd that can talk to the local zebra (>= 3.18, or FRR
< 8.3) the lab runs zebra and every kernel check below runs for GoBGP exactly as for FRR and BIRD. With
Debian's 3.10 the ECMP test checks GoBGP's RIB for the three paths (the criterion "three ECMP next hops in the
kernel" is then NOT shown for GoBGP), and the client test installs the one path GoBGP marks best into the
router's kernel (the FIB-agent role zebra would play) and requires the answer to come from that very node.
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
    converge(lab)
    if not lab.router_programs_kernel:
        # gobgpd 3.10 + FRR >= 8.3 zebra (module docstring): GoBGP's RIB must hold all three equal paths.
        problem = bgplab.gobgp_zebra_problem()
        for prefix in PREFIXES:
            paths = lab.rib(prefix)
            assert sorted(p["next_hop"] for p in paths) == sorted(_hops(prefix)), (problem, paths)
        return
    for prefix in PREFIXES:
        address = prefix.split("/")[0]
        got = bgplab.wait_for(
            lambda a=address, p=prefix: lab.kernel_next_hops(a) == _hops(p) and lab.kernel_next_hops(a),  # type: ignore[misc]
            timeout=10,
            what=f"ECMP kernel route for {prefix}",
        )
        assert got == _hops(prefix)


def test_client_reaches_the_service_through_the_vip(lab: bgplab.Lab) -> None:
    converge(lab)
    urls = {PREFIXES[0]: f"http://{VIP4}:8080/", PREFIXES[1]: f"http://[{VIP6}]:8080/"}
    if lab.router_programs_kernel:
        bgplab.wait_for(lambda: lab.kernel_next_hops(VIP4), timeout=10, what="kernel route")
        for url in urls.values():
            answer = bgplab.wait_for(lambda u=url: lab.fetch(u), timeout=10, what=f"GET {url}")  # type: ignore[misc]
            assert answer in SPEAKERS
        return
    # gobgpd without zebra (module docstring): GoBGP's best path goes into the kernel; the answer must come from
    # the node GoBGP chose.
    try:
        for prefix, url in urls.items():
            hop = lab.install_gobgp_best_path(prefix)
            assert lab.kernel_next_hops(prefix.split("/")[0]) == {hop}
            answer = bgplab.wait_for(lambda u=url: lab.fetch(u), timeout=10, what=f"GET {url}")  # type: ignore[misc]
            chosen = next(n for n in SPEAKERS if hop in (node_v4(n), node_v6(n)))
            assert answer == chosen, (prefix, hop, answer)
    finally:
        for prefix in PREFIXES:
            lab.remove_kernel_route(prefix)


def test_removing_the_advertisement_withdraws_the_routes(lab: bgplab.Lab) -> None:
    converge(lab)
    try:
        for node in SPEAKERS:
            lab.reconfigure_speaker(node, advertise=False)
        for prefix in PREFIXES:
            bgplab.wait_for(lambda p=prefix: lab.rib(p) == [], timeout=10, what=f"{prefix} withdrawn")  # type: ignore[misc]
        assert {node_v4(n) for n in SPEAKERS} <= lab.established()  # withdrawn, not disconnected
        if lab.router_programs_kernel:
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
    if lab.router_programs_kernel:
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
