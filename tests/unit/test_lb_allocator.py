"""The allocator as a table of steps, each on the state the previous one left (as MetalLB's allocator test)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from metalhorn.lb import allocator, config, model

Action = Callable[[allocator.Allocator], str]


def pool(name: str, *addresses: str, auto: bool = True, buggy: bool = False, **alloc: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"addresses": list(addresses), "autoAssign": auto, "avoidBuggyIPs": buggy}
    if alloc:
        spec["serviceAllocation"] = alloc
    return {"apiVersion": config.API_V1BETA1, "kind": "IPAddressPool", "metadata": {"name": name}, "spec": spec}


def svc(
    name: str,
    *,
    ns: str = "default",
    ports: tuple[int | tuple[int, str], ...] = (80,),
    ip: str = "",
    pool: str = "",
    share: str = "",
    policy: str = "SingleStack",
    families: tuple[int, ...] = (4,),
    labels: dict[str, str] | None = None,
) -> model.Service:
    return model.Service(
        namespace=ns,
        name=name,
        ports=tuple(model.ServicePort(*((p, "TCP") if isinstance(p, int) else p)) for p in ports),
        requested_ips=tuple(ipaddress.ip_address(t) for t in ip.split(",") if t),
        address_pool=pool,
        sharing_key=share,
        ip_family_policy=model.IPFamilyPolicy(policy),
        ip_families=families,
        labels=tuple(sorted((labels or {}).items())),
    )


def fmt(result: allocator.Assignment | allocator.Pending | None) -> str:
    if result is None:
        return "none"
    if isinstance(result, allocator.Pending):
        return f"pending {result.code.value}: {result.reason}"
    return f"{result.pool}:{','.join(str(i) for i in result.ips)}"


def assign(name: str, **kw: Any) -> Action:
    return lambda a: fmt(a.assign(svc(name, **kw)))


def restore(name: str, ips: str, **kw: Any) -> Action:
    return lambda a: fmt(a.restore(svc(name, **kw), [ipaddress.ip_address(t) for t in ips.split(",")]))


def release(name: str, ns: str = "default") -> Action:
    return lambda a: str(a.release(f"{ns}/{name}"))


def pools(*docs: dict[str, Any]) -> Action:
    def run(a: allocator.Allocator) -> str:
        events = a.set_pools(config.parse(docs))
        out = []
        for e in events:
            if isinstance(e, allocator.Released):
                out.append(f"released {e.service}: {e.reason}")
            else:
                out.append(f"moved {e.service}: {e.old_pool}->{e.new_pool}")
        return "; ".join(out)

    return run


def counts(*names: str) -> Action:
    def run(a: allocator.Allocator) -> str:
        c = a.counts()
        return " ".join(f"{n}={c[n].assigned}/{c[n].total}" for n in names)

    return run


def users(ip: str) -> Action:
    return lambda a: ",".join(a.users(ipaddress.ip_address(ip)))


def namespaces(labels: dict[str, dict[str, str]]) -> Action:
    def run(a: allocator.Allocator) -> str:
        a.set_namespace_labels(labels)
        return ""

    return run


CONFIG_A = (
    pool("a", "198.18.0.0/30"),
    pool("b", "198.18.1.254-198.18.2.1", buggy=True),
    pool("v6", "2001:db8::/126"),
    pool("dual", "198.18.3.10-198.18.3.11", "2001:db8:1::10-2001:db8:1::11"),
    pool("manual", "198.18.4.0/31", auto=False),
    pool("reserved", "198.18.5.0/30", priority=10, namespaces=["team"]),
)
CONFIG_B = (
    pool("a", "198.18.0.0/31"),
    *CONFIG_A[1:],
    pool("c", "198.18.6.0/24", buggy=True),
)
CONFIG_C = (*CONFIG_B[:-1], pool("c2", "198.18.6.0/24", buggy=True))
PRIORITY = (
    pool("p-hi", "198.18.7.1/32", priority=1, serviceSelectors=[{"matchLabels": {"app": "web"}}]),
    pool("p-lo", "198.18.7.2-198.18.7.3", priority=5, serviceSelectors=[{"matchLabels": {"app": "web"}}]),
    pool("p-ns", "198.18.7.8/31", namespaces=["web-ns"]),
    pool("p-sel", "198.18.7.16/31", namespaceSelectors=[{"matchLabels": {"team": "blue"}}]),
    pool("p-any", "198.18.7.32/32", priority=7),
    pool("rest", "198.18.8.0/31"),
)
WEB = {"app": "web"}

STEPS: list[tuple[str, Action, str]] = [
    ("load A", pools(*CONFIG_A), ""),
    ("first IP of first pool", assign("s1"), "a:198.18.0.0"),
    ("next IP", assign("s2"), "a:198.18.0.1"),
    ("assign is stable", assign("s1"), "a:198.18.0.0"),
    ("counts", counts("a", "b", "v6", "dual", "manual"), "a=2/4 b=0/2 v6=0/4 dual=0/4 manual=0/2"),
    ("sharing key, port 80", assign("s3", share="k"), "a:198.18.0.2"),
    ("same key other port shares", assign("s4", share="k", ports=(443,)), "a:198.18.0.2"),
    ("same key same port does not", assign("s5", share="k"), "a:198.18.0.3"),
    ("shared IP counted once", counts("a"), "a=4/4"),
    ("users of shared IP", users("198.18.0.2"), "default/s3,default/s4"),
    ("a full: next pool by name", assign("s6"), "b:198.18.1.254"),
    ("buggy .255 and .0 skipped", assign("s7"), "b:198.18.2.1"),
    ("dual pool's IPv4", assign("s8"), "dual:198.18.3.10"),
    ("dual pool's last IPv4", assign("s9"), "dual:198.18.3.11"),
    ("IPv4 exhausted", assign("s10"), "pending no-free-ip: no free IP in pools a, b, dual, v6"),
    ("autoAssign=false pool not used", counts("manual"), "manual=0/2"),
    ("IPv6 single stack", assign("s10", families=(6,)), "dual:2001:db8:1::10"),
    ("family change re-allocates", assign("s10"), "pending no-free-ip: no free IP in pools a, b, dual, v6"),
    ("old IPv6 was freed", counts("dual"), "dual=2/4"),
    ("release", release("s2"), "True"),
    ("freed hole reused", assign("s10"), "a:198.18.0.1"),
    ("release twice", release("s2"), "False"),
    (
        "requested IP taken",
        assign("r1", ip="198.18.0.1"),
        "pending ip-taken: requested IP 198.18.0.1 is taken by default/s10",
    ),
    (
        "requested IP in no pool",
        assign("r2", ip="198.18.9.9"),
        "pending not-in-pool: requested IP 198.18.9.9 is in no pool",
    ),
    (
        "requested buggy IP",
        assign("r3", ip="198.18.2.0"),
        "pending not-in-pool: requested IP 198.18.2.0 is in no pool (pool b avoids .0 and .255)",
    ),
    ("request from manual pool", assign("r4", ip="198.18.4.1"), "manual:198.18.4.1"),
    ("pool annotation: manual", assign("m1", pool="manual"), "manual:198.18.4.0"),
    ("manual pool full", assign("m2", pool="manual"), "pending no-free-ip: no free IP in pool manual"),
    ("unknown pool", assign("m3", pool="ghost"), "pending unknown-pool: pool ghost does not exist"),
    (
        "request and annotation disagree",
        assign("r5", ip="198.18.4.0", pool="a"),
        "pending pool-mismatch: requested IP 198.18.4.0 is in pool manual, not in pool a",
    ),
    ("namespace-pinned pool", assign("t1", ns="team"), "reserved:198.18.5.0"),
    (
        "pinned pool refuses others",
        assign("o1", ns="other", pool="reserved"),
        "pending not-allowed: pool reserved does not serve other/o1 (its serviceAllocation excludes it)",
    ),
    (
        "pinned namespace requests IP elsewhere",
        assign("t2", ns="team", ip="198.18.4.0"),
        "pending ip-taken: requested IP 198.18.4.0 is taken by default/m1",
    ),
    ("share by request", assign("sh1", ip="198.18.0.2", share="k", ports=(8080,)), "a:198.18.0.2"),
    (
        "request shared IP with other key",
        assign("sh2", ip="198.18.0.2", share="other"),
        "pending ip-taken: requested IP 198.18.0.2 is taken by default/s3",
    ),
    (
        "request shared IP without key",
        assign("sh2", ip="198.18.0.2"),
        "pending ip-taken: requested IP 198.18.0.2 is taken by default/s3",
    ),
    (
        "request shared IP, port collides",
        assign("sh3", ip="198.18.0.2", share="k", ports=(443,)),
        "pending ip-taken: requested IP 198.18.0.2 is taken by default/s4 (port 443/TCP is in use)",
    ),
    (
        "same port, other protocol shares",
        assign("sh4", ip="198.18.0.2", share="k", ports=((443, "UDP"),)),
        "a:198.18.0.2",
    ),
    ("release one sharer", release("s3"), "True"),
    ("others keep the IP", users("198.18.0.2"), "default/s4,default/sh1,default/sh4"),
    (
        "port change that now collides moves to a compatible shared IP",
        assign("s4", share="k", ports=(8080,)),
        "a:198.18.0.3",
    ),
    ("s4 joined s5", users("198.18.0.3"), "default/s4,default/s5"),
    (
        "sharing key change while shared",
        assign("sh4", share="z", ip="198.18.0.2", ports=((443, "UDP"),)),
        "pending ip-taken: requested IP 198.18.0.2 is taken by default/sh1",
    ),
    ("lone user may change its key", assign("s7", share="solo"), "b:198.18.2.1"),
    (
        "RequireDualStack, no pair",
        assign("d1", policy="RequireDualStack", families=(4, 6)),
        "pending no-free-ip: no free IPv4+IPv6 pair in pools a, b, dual, v6",
    ),
    ("free a dual IPv4", release("s9"), "True"),
    (
        "RequireDualStack from one pool",
        assign("d1", policy="RequireDualStack", families=(4, 6)),
        "dual:198.18.3.11,2001:db8:1::10",
    ),
    (
        "PreferDualStack v6 first, no pair",
        assign("d2", policy="PreferDualStack", families=(6, 4)),
        "dual:2001:db8:1::11",
    ),
    (
        "PreferDualStack v4 first: only v6 left",
        assign("d3", policy="PreferDualStack", families=(4, 6)),
        "v6:2001:db8::",
    ),
    ("release s5, s4 stays on .3", release("s5"), "True"),
    (
        "PreferDualStack grows only within its pool",
        assign("d3", policy="PreferDualStack", families=(4, 6)),
        "v6:2001:db8::",
    ),
    (
        "PreferDualStack falls back to secondary",
        assign("d4", policy="PreferDualStack", families=(4, 6)),
        "v6:2001:db8::1",
    ),
    ("release d1 frees a pair", release("d1"), "True"),
    (
        "d2 grows to dual stack",
        assign("d2", policy="PreferDualStack", families=(6, 4)),
        "dual:2001:db8:1::11,198.18.3.11",
    ),
    ("counts after dual stack", counts("a", "b", "v6", "dual"), "a=4/4 b=2/2 v6=2/4 dual=3/4"),
    (
        "shrink a, add c",
        pools(*CONFIG_B),
        "released default/s4: 198.18.0.3 left pool a; released default/sh1: 198.18.0.2 left pool a",
    ),
    (
        "released request now in no pool",
        assign("sh1", ip="198.18.0.2", share="k", ports=(8080,)),
        "pending not-in-pool: requested IP 198.18.0.2 is in no pool",
    ),
    ("others survived the edit", counts("a", "dual", "c"), "a=2/2 dual=3/4 c=0/254"),
    ("new pool, buggy .0 skipped", assign("s11"), "c:198.18.6.1"),
    ("rename c to c2", pools(*CONFIG_C), "moved default/s11: c->c2"),
    ("kept across rename", assign("s11"), "c2:198.18.6.1"),
    ("restore a stored IP", restore("s11", "198.18.6.77"), "c2:198.18.6.77"),
    ("restored IP kept", assign("s11"), "c2:198.18.6.77"),
    ("hole below is lowest", assign("s12"), "c2:198.18.6.1"),
    (
        "restore conflict",
        restore("s13", "198.18.6.77"),
        "pending ip-taken: stored IP 198.18.6.77 is taken by default/s11",
    ),
    (
        "restore buggy",
        restore("s13", "198.18.6.0"),
        "pending not-in-pool: stored IP 198.18.6.0 is in no pool (pool c2 avoids .0 and .255)",
    ),
    (
        "restore dual pair",
        restore("s13", "198.18.3.10,2001:db8:1::10"),
        "pending ip-taken: stored IP 198.18.3.10 is taken by default/s8",
    ),
    (
        "restore across pools",
        restore("s13", "198.18.6.90,2001:db8::3"),
        "pending not-in-pool: stored IPs 198.18.6.90, 2001:db8::3 are not in one pool",
    ),
    (
        "remove c2",
        pools(*CONFIG_B[:-1]),
        "released default/s11: pool c2 was removed; released default/s12: pool c2 was removed",
    ),
    (
        "priority config",
        pools(*PRIORITY),
        "released default/d2: pool dual was removed; released default/d3: pool v6 was removed; "
        "released default/d4: pool v6 was removed; released default/m1: pool manual was removed; "
        "released default/r4: pool manual was removed; "
        "released default/s1: pool a was removed; released default/s10: pool a was removed; "
        "released default/s6: pool b was removed; released default/s7: pool b was removed; "
        "released default/s8: pool dual was removed; released team/t1: pool reserved was removed",
    ),
    ("lowest priority value first", assign("w1", labels=WEB), "p-hi:198.18.7.1"),
    ("then the next priority", assign("w2", labels=WEB), "p-lo:198.18.7.2"),
    ("no-label service: catch-all serviceAllocation", assign("x1"), "p-any:198.18.7.32"),
    ("then pools without serviceAllocation", assign("x2"), "rest:198.18.8.0"),
    ("priority before unprioritised namespace pool", assign("w3", ns="web-ns", labels=WEB), "p-lo:198.18.7.3"),
    ("namespace pool", assign("w4", ns="web-ns", labels=WEB), "p-ns:198.18.7.8"),
    ("namespace selector matches nothing yet", assign("b1", ns="blue-ns"), "rest:198.18.8.1"),
    ("namespace labels arrive", namespaces({"blue-ns": {"team": "blue"}}), ""),
    ("existing assignment kept", assign("b1", ns="blue-ns"), "rest:198.18.8.1"),
    ("new service in the selected namespace", assign("b2", ns="blue-ns"), "p-sel:198.18.7.16"),
    ("everything full", assign("x3"), "pending no-free-ip: no free IP in pools p-any, rest"),
    (
        "counts by name",
        counts("p-hi", "p-lo", "p-ns", "p-sel", "p-any", "rest"),
        "p-hi=1/1 p-lo=2/2 p-ns=1/2 p-sel=1/2 p-any=1/1 rest=2/2",
    ),
]


def test_allocator_steps() -> None:
    assert len(STEPS) >= 60
    alloc = allocator.Allocator()
    for i, (what, action, expected) in enumerate(STEPS):
        got = action(alloc)
        assert got == expected, f"step {i} ({what}): got {got!r}"


# --- properties beyond the table ----------------------------------------------------------------------------


def test_restart_rebuilds_the_same_ips_from_stored_statuses() -> None:
    cfg = config.parse([pool("p", "198.18.0.0/29", "2001:db8::/125", buggy=True), pool("q", "198.18.1.0/30")])
    services = [
        svc("a"),
        svc("b", share="k", ports=(80,)),
        svc("c", share="k", ports=(443,)),
        svc("d", policy="RequireDualStack", families=(6, 4)),
        svc("e", ip="198.18.1.2"),
        svc("f", pool="q"),
    ]
    first = allocator.Allocator()
    first.set_pools(cfg)
    stored = {}
    for s in services:
        result = first.assign(s)
        assert isinstance(result, allocator.Assignment), result
        stored[s.key] = result.ips
    second = allocator.Allocator()
    second.set_pools(cfg)
    for s in reversed(services):  # order of the store must not matter
        assert isinstance(second.restore(s, stored[s.key]), allocator.Assignment)
    for s in services:
        result = second.assign(s)
        assert isinstance(result, allocator.Assignment) and result.ips == stored[s.key]
    assert second.counts() == first.counts()


@pytest.mark.parametrize(
    ("addresses", "buggy", "total"),
    [
        (["198.18.0.0/24"], True, 254),
        (["198.18.0.0/16"], True, 65536 - 512),
        (["198.18.0.255-198.18.1.0"], True, 0),
        (["198.18.0.250-198.18.1.5"], True, 10),
        (["198.18.0.250-198.18.1.5"], False, 12),
        (["2001:db8::/64"], True, 2**64),
    ],
)
def test_pool_totals(addresses: list[str], buggy: bool, total: int) -> None:
    a = allocator.Allocator()
    a.set_pools(config.parse([pool("p", *addresses, buggy=buggy)]))
    assert a.counts()["p"].total == total


def test_huge_ipv6_pool_allocates_lowest_first() -> None:
    a = allocator.Allocator()
    a.set_pools(config.parse([pool("p", "2001:db8::/64")]))
    got = [a.assign(svc(f"s{i}", families=(6,))) for i in range(3)]
    assert [fmt(g) for g in got] == ["p:2001:db8::", "p:2001:db8::1", "p:2001:db8::2"]


def test_ten_thousand_services_from_a_slash_16_cost_flat_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count the addresses the free list inspects: a scan from the start each time would be ~n^2/2 = 5e7."""
    inspected = 0
    usable = allocator._Range.usable

    def counting(self: allocator._Range, x: int) -> bool:
        nonlocal inspected
        inspected += 1
        return usable(self, x)

    monkeypatch.setattr(allocator._Range, "usable", counting)
    a = allocator.Allocator()
    a.set_pools(config.parse([pool("p", "198.18.0.0/16", buggy=True)]))
    n = 10_000
    ips = []
    for i in range(n):
        result = a.assign(svc(f"s{i}"))
        assert isinstance(result, allocator.Assignment)
        ips.append(int(result.ips[0]))
    assert ips == sorted(ips) and len(set(ips)) == n
    assert all(ip & 0xFF not in (0, 255) for ip in ips)
    for i in range(0, n, 7):  # churn: free every 7th, then take them back lowest first
        a.release(f"default/s{i}")
    again = [int(a.assign(svc(f"t{i}")).ips[0]) for i in range(0, n, 7)]  # type: ignore[union-attr]
    assert again == sorted(ips[i] for i in range(0, n, 7))
    assert inspected < 3 * n
    assert a.counts()["p"].assigned == n


@pytest.mark.parametrize("seed", range(5))
def test_free_list_matches_a_naive_model(seed: int) -> None:
    """Random assign/release/restore against "lowest usable address not in use", with buggy IPs skipped."""
    import random

    rnd = random.Random(seed)
    a = allocator.Allocator()
    a.set_pools(config.parse([pool("p", "198.18.0.250-198.18.1.10", "198.18.3.0/30", buggy=True)]))
    space = [
        x
        for lo, hi in ((0xC612_00FA, 0xC612_010A), (0xC612_0300, 0xC612_0303))
        for x in range(lo, hi + 1)
        if x & 0xFF not in (0, 255)
    ]
    held: dict[str, int] = {}
    for step in range(400):
        op = rnd.random()
        name = f"s{rnd.randrange(30)}"
        if op < 0.5 and name not in held:
            free = [x for x in space if x not in held.values()]
            result = a.assign(svc(name))
            if free:
                assert isinstance(result, allocator.Assignment), (step, result)
                assert int(result.ips[0]) == free[0], step
                held[name] = free[0]
            else:
                assert isinstance(result, allocator.Pending) and result.code is allocator.PendingCode.NO_FREE_IP
        elif op < 0.8:
            assert a.release(f"default/{name}") == (name in held)
            held.pop(name, None)
        elif name not in held:
            x = rnd.choice(space)
            result = a.restore(svc(name), [ipaddress.IPv4Address(x)])
            assert isinstance(result, allocator.Assignment) == (x not in held.values()), step
            if isinstance(result, allocator.Assignment):
                held[name] = x
        assert a.counts()["p"].assigned == len(held)
