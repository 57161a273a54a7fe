"""Table tests for the replica scheduler: each case is a cluster, a policy and the exact decision with reasons."""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalhorn.common import errors
from metalhorn.storage import scheduler
from metalhorn.storage.scheduler import DiskCandidate, NodeCandidate, Placement, Policy

G = 1 << 30


def disk(path: str = "/d", *, capacity: int = 100 * G, available: int | None = None, **kw: object) -> DiskCandidate:
    return DiskCandidate(path=path, capacity=capacity, available=capacity if available is None else available, **kw)  # type: ignore[arg-type]


def node(name: str, *disks: DiskCandidate, **kw: object) -> NodeCandidate:
    return NodeCandidate(name=name, disks=disks or (disk(),), **kw)  # type: ignore[arg-type]


def at(text: str) -> Placement:
    name, path = text.split(":")
    return Placement(node=name, disk=path)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    nodes: tuple[NodeCandidate, ...]
    placed: tuple[str, ...]  # expected new placements, "node:path", in order
    refused: tuple[tuple[str, str, str], ...] = ()  # expected (node, disk, reason), sorted by node then disk
    count: int = 3
    size: int = 10 * G
    required: int = 0
    existing: tuple[str, ...] = ()
    policy: Policy = dataclasses.field(default_factory=Policy)
    unplaced: int = 0


THREE = (node("n1"), node("n2"), node("n3"))

CASES = [
    Case("three-nodes-one-each", THREE, ("n1:/d", "n2:/d", "n3:/d")),
    Case(
        "hard-anti-affinity-leaves-one-unplaced",
        (node("n1", disk("/a"), disk("/b")), node("n2")),
        ("n1:/a", "n2:/d"),
        (("n1", "/b", "node n1 already holds a replica of this volume (hard anti-affinity)"),),
        unplaced=1,
    ),
    Case(
        "soft-anti-affinity-reuses-a-node-on-another-disk",
        (node("n1", disk("/a"), disk("/b")), node("n2")),
        ("n1:/a", "n2:/d", "n1:/b"),
        policy=Policy(node_anti_affinity="soft"),
    ),
    Case(
        "soft-anti-affinity-reuses-a-disk-last",
        (node("n1"), node("n2")),
        ("n1:/d", "n2:/d", "n1:/d"),
        policy=Policy(node_anti_affinity="soft"),
    ),
    Case(
        "soft-anti-affinity-still-prefers-distinct-nodes",
        (node("n1", disk("/a"), disk("/b")), node("n2"), node("n3")),
        ("n1:/a", "n2:/d", "n3:/d"),
        (
            (
                "n1",
                "/b",
                "disk /b on n1: node n1 already holds a replica of this volume; soft anti-affinity preferred others",
            ),
        ),
        policy=Policy(node_anti_affinity="soft"),
    ),
    Case(
        "hard-zone-anti-affinity",
        (node("n1", zone="z1"), node("n2", zone="z1"), node("n3", zone="z2")),
        ("n1:/d", "n3:/d"),
        (
            (
                "n2",
                "/d",
                "zone z1 of node n2 already holds a replica of this volume (hard zone anti-affinity)",
            ),
        ),
        policy=Policy(zone_anti_affinity="hard"),
        unplaced=1,
    ),
    Case(
        "soft-zone-anti-affinity-prefers-an-unused-zone",
        (node("n1", zone="z1"), node("n2", zone="z1"), node("n3", zone="z2")),
        ("n1:/d", "n3:/d"),
        (
            (
                "n2",
                "/d",
                "disk /d on n2: zone z1 already holds a replica of this volume; "
                "soft zone anti-affinity preferred others",
            ),
        ),
        count=2,
    ),
    Case(
        "soft-zone-anti-affinity-reuses-a-zone-when-needed",
        (node("n1", zone="z1"), node("n2", zone="z1"), node("n3", zone="z2")),
        ("n1:/d", "n3:/d", "n2:/d"),
    ),
    Case(
        "nodes-without-zone-are-their-own-zone",
        THREE,
        ("n1:/d", "n2:/d", "n3:/d"),
        policy=Policy(zone_anti_affinity="hard"),
    ),
    Case(
        "over-provisioning-refuses",
        (node("n1", disk(capacity=32 * G, scheduled=30 * G)), node("n2"), node("n3")),
        ("n2:/d", "n3:/d"),
        (("n1", "/d", "disk /d on n1: 30GiB scheduled + 10GiB would exceed 100% over-provisioning of 32GiB"),),
        unplaced=1,
    ),
    Case(
        "over-provisioning-200-percent-fits",
        (node("n1", disk(capacity=32 * G, scheduled=30 * G)), node("n2"), node("n3")),
        ("n2:/d", "n3:/d", "n1:/d"),
        policy=Policy(over_provisioning_percentage=200),
    ),
    Case(
        "over-provisioning-exactly-at-the-limit-fits",
        (node("n1", disk(capacity=40 * G, scheduled=30 * G)),),
        ("n1:/d",),
        count=1,
    ),
    Case(
        "reserved-shrinks-the-over-provisioning-base",
        (node("n1", disk(reserved=60 * G)),),
        (),
        (("n1", "/d", "disk /d on n1: 0B scheduled + 50GiB would exceed 100% over-provisioning of 40GiB"),),
        count=1,
        size=50 * G,
        unplaced=1,
    ),
    Case(
        "minimal-available-refuses-at-the-limit",
        (node("n1", disk(available=25 * G)), node("n2", disk(available=26 * G))),
        ("n2:/d",),
        (("n1", "/d", "disk /d on n1: available 25% is not above the minimal 25% (25GiB)"),),
        count=2,
        unplaced=1,
    ),
    Case(
        "minimal-available-counts-the-data-to-copy",
        (node("n1", disk(available=26 * G)), node("n2", disk(available=30 * G))),
        ("n2:/d",),
        (("n1", "/d", "disk /d on n1: available 24% after copying 2GiB is not above the minimal 25% (25GiB)"),),
        count=2,
        required=2 * G,
        unplaced=1,
    ),
    Case(
        "minimal-available-zero-percent",
        (node("n1", disk(available=1 * G)),),
        ("n1:/d",),
        count=1,
        policy=Policy(minimal_available_percentage=0),
    ),
    Case(
        "node-tags",
        (node("n1", tags=("ssd", "fast")), node("n2", tags=("hdd",)), node("n3")),
        ("n1:/d",),
        (("n2", "", "node n2 lacks tags fast, ssd"), ("n3", "", "node n3 lacks tags fast, ssd")),
        policy=Policy(node_selector=("ssd", "fast")),
        unplaced=2,
    ),
    Case(
        "disk-tags",
        (node("n1", disk("/a", tags=("ssd",)), disk("/b")), node("n2"), node("n3", disk(tags=("nvme", "ssd")))),
        ("n1:/a", "n3:/d"),
        (("n1", "/b", "disk /b on n1 lacks tag ssd"), ("n2", "/d", "disk /d on n2 lacks tag ssd")),
        policy=Policy(disk_selector=("ssd",)),
        unplaced=1,
    ),
    Case(
        "down-unschedulable-and-diskless-nodes",
        (
            node("n1"),
            node("n2", ready=False),
            node("n3", schedulable=False),
            NodeCandidate(name="n4"),
        ),
        ("n1:/d",),
        (
            ("n2", "", "node n2 is down"),
            ("n3", "", "node n3 is unschedulable"),
            ("n4", "", "node n4 has no disks"),
        ),
        unplaced=2,
    ),
    Case(
        "broken-disks",
        (
            node("n1", disk(schedulable=False)),
            node("n2", disk(capacity=0)),
            node("n3", disk(available=0)),
        ),
        (),
        (
            ("n1", "/d", "disk /d on n1 is unschedulable"),
            ("n2", "/d", "disk /d on n2 reports no capacity"),
            ("n3", "/d", "disk /d on n3 has no available space"),
        ),
        unplaced=3,
    ),
    Case(
        "most-free-schedulable-space-first",
        (node("n1", disk(scheduled=80 * G)), node("n2", disk(scheduled=10 * G)), node("n3", disk(scheduled=50 * G))),
        ("n2:/d",),
        (
            ("n1", "/d", "disk /d on n1 fits, but other disks ranked higher (data locality, then free space)"),
            ("n3", "/d", "disk /d on n3 fits, but other disks ranked higher (data locality, then free space)"),
        ),
        count=1,
    ),
    Case(
        "best-disk-on-a-node",
        (node("n1", disk("/a", capacity=50 * G), disk("/b", capacity=80 * G)),),
        ("n1:/b",),
        (("n1", "/a", "node n1 already holds a replica of this volume (hard anti-affinity)"),),
        count=1,
    ),
    Case(
        "existing-replicas-count-for-anti-affinity",
        (*THREE, node("n4")),
        ("n2:/d",),
        (("n4", "/d", "disk /d on n4 fits, but other disks ranked higher (data locality, then free space)"),),
        count=1,
        existing=("n1:/d", "n3:/d"),
    ),
    Case(
        "existing-on-a-second-disk-blocks-the-node",
        (node("n1", disk("/a"), disk("/b")), node("n2")),
        ("n2:/d",),
        (("n1", "/b", "node n1 already holds a replica of this volume (hard anti-affinity)"),),
        count=2,
        existing=("n1:/a",),
        unplaced=1,
    ),
    Case(
        "nothing-needed",
        (node("n1"),),
        (),
        (("n1", "/d", "disk /d on n1 fits, but no new replica was needed"),),
        count=0,
    ),
    Case(
        "best-effort-locality-puts-one-replica-local",
        (node("n1"), node("n2"), node("n3", disk(capacity=60 * G))),
        ("n3:/d", "n1:/d"),
        (("n2", "/d", "disk /d on n2 fits, but other disks ranked higher (data locality, then free space)"),),
        count=2,
        policy=Policy(data_locality="best-effort", local_node="n3"),
    ),
    Case(
        "best-effort-locality-not-forced-when-local-holds-one",
        (node("n1"), node("n2"), node("n3", disk(capacity=60 * G))),
        ("n1:/d",),
        (("n2", "/d", "disk /d on n2 fits, but other disks ranked higher (data locality, then free space)"),),
        count=1,
        existing=("n3:/d",),
        policy=Policy(data_locality="best-effort", local_node="n3"),
    ),
    Case(
        "best-effort-locality-falls-back-when-local-is-down",
        (node("n1"), node("n2", ready=False)),
        ("n1:/d",),
        (("n2", "", "node n2 is down"),),
        count=1,
        policy=Policy(data_locality="best-effort", local_node="n2"),
    ),
    Case(
        "strict-local",
        (node("n1"), node("n2", disk(capacity=40 * G))),
        ("n2:/d",),
        (("n1", "", "node n1 is not the local node n2 (strict-local data locality)"),),
        count=1,
        policy=Policy(data_locality="strict-local", local_node="n2"),
    ),
    Case(
        "strict-local-full-local-disk",
        (node("n1"), node("n2", disk(capacity=40 * G, scheduled=35 * G))),
        (),
        (
            ("n1", "", "node n1 is not the local node n2 (strict-local data locality)"),
            ("n2", "/d", "disk /d on n2: 35GiB scheduled + 10GiB would exceed 100% over-provisioning of 40GiB"),
        ),
        count=1,
        policy=Policy(data_locality="strict-local", local_node="n2"),
        unplaced=1,
    ),
    Case(
        "placements-in-one-call-add-up",
        (node("n1", disk(capacity=25 * G)),),
        ("n1:/d", "n1:/d"),
        policy=Policy(node_anti_affinity="soft"),
        unplaced=1,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_schedule(case: Case) -> None:
    decision = scheduler.schedule(
        size=case.size,
        count=case.count,
        nodes=case.nodes,
        existing=[at(p) for p in case.existing],
        policy=case.policy,
        required=case.required,
    )
    assert [f"{p.node}:{p.disk}" for p in decision.placements] == list(case.placed)
    assert [(r.node, r.disk, r.reason) for r in decision.refusals] == list(case.refused)
    assert decision.unplaced == case.unplaced
    assert decision.complete == (case.unplaced == 0)


def test_refusals_after_a_full_placement_name_the_later_state() -> None:
    # Two placements on n1's only disk under soft anti-affinity exhaust it; n2 is down.
    decision = scheduler.schedule(
        size=10 * G,
        count=3,
        nodes=[node("n1", disk(capacity=25 * G)), node("n2", ready=False)],
        existing=[],
        policy=Policy(node_anti_affinity="soft"),
    )
    assert decision.unplaced == 1
    assert [(r.node, r.reason) for r in decision.refusals] == [("n2", "node n2 is down")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "replica size must be positive"),
        ({"count": -1}, "replica count must not be negative"),
        ({"required": -1}, "required bytes must not be negative"),
        ({"nodes": [node("n1"), node("n1")]}, "node n1 is listed twice"),
        ({"nodes": [node("n1", disk("/a"), disk("/a"))]}, "node n1 lists a disk path twice"),
        (
            {"count": 2, "policy": Policy(data_locality="strict-local", local_node="n1")},
            "strict-local data locality allows exactly one replica",
        ),
        (
            {"count": 1, "existing": [at("n1:/d")], "policy": Policy(data_locality="strict-local", local_node="n1")},
            "strict-local data locality allows exactly one replica",
        ),
    ],
    ids=[
        "zero-size",
        "negative-count",
        "negative-required",
        "duplicate-node",
        "duplicate-disk",
        "strict-two",
        "strict-plus-existing",
    ],
)
def test_schedule_rejects_impossible_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"size": G, "count": 1, "nodes": THREE, "existing": [], "policy": Policy()}
    args.update(kwargs)
    with pytest.raises(errors.InvalidArgument, match=message):
        scheduler.schedule(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node_anti_affinity": "maybe"}, "node_anti_affinity must be 'hard' or 'soft'"),
        ({"zone_anti_affinity": ""}, "zone_anti_affinity must be 'hard' or 'soft'"),
        ({"data_locality": "local"}, "data_locality must be"),
        ({"data_locality": "strict-local"}, "needs local_node"),
        ({"over_provisioning_percentage": 0}, "over_provisioning_percentage must be positive"),
        ({"minimal_available_percentage": 100}, "minimal_available_percentage must be in 0..99"),
        ({"minimal_available_percentage": -1}, "minimal_available_percentage must be in 0..99"),
    ],
    ids=["node-aa", "zone-aa", "locality", "strict-without-node", "overprov-zero", "minimal-100", "minimal-negative"],
)
def test_policy_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_scheduler_is_pure() -> None:
    path = pathlib.Path(scheduler.__file__)
    names: set[str] = set()
    for item in ast.walk(ast.parse(path.read_text())):
        if isinstance(item, ast.Import):
            names.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module:
            names.add(item.module.split(".")[0])
    assert not names & {"asyncio", "socket", "os", "subprocess", "threading", "time", "pathlib", "shutil"}


# Properties over random clusters: the rules hold whatever the numbers.

_disks = st.builds(
    DiskCandidate,
    path=st.sampled_from(["/a", "/b"]),
    capacity=st.integers(0, 100).map(lambda n: n * G),
    available=st.integers(0, 100).map(lambda n: n * G),
    scheduled=st.integers(0, 150).map(lambda n: n * G),
    tags=st.sets(st.sampled_from(["ssd", "hdd"])).map(tuple),
    schedulable=st.booleans(),
    reserved=st.integers(0, 20).map(lambda n: n * G),
)
_nodes = st.lists(
    st.builds(
        NodeCandidate,
        name=st.sampled_from([f"n{i}" for i in range(6)]),
        zone=st.sampled_from(["", "z1", "z2"]),
        tags=st.sets(st.sampled_from(["ssd", "gpu"])).map(tuple),
        ready=st.booleans(),
        schedulable=st.booleans(),
        disks=st.lists(_disks, max_size=2, unique_by=lambda d: d.path).map(tuple),
    ),
    max_size=6,
    unique_by=lambda n: n.name,
)
_policies = st.builds(
    Policy,
    node_anti_affinity=st.sampled_from(["hard", "soft"]),
    zone_anti_affinity=st.sampled_from(["hard", "soft"]),
    node_selector=st.sets(st.sampled_from(["ssd"])).map(tuple),
    disk_selector=st.sets(st.sampled_from(["ssd"])).map(tuple),
    over_provisioning_percentage=st.sampled_from([50, 100, 200]),
    minimal_available_percentage=st.sampled_from([0, 10, 25]),
    data_locality=st.sampled_from(["disabled", "best-effort"]),
    local_node=st.sampled_from(["", "n0", "n3"]),
)


@settings(max_examples=100, deadline=None)
@given(nodes=_nodes, policy=_policies, count=st.integers(0, 4), size=st.integers(1, 40).map(lambda n: n * G))
def test_schedule_properties(nodes: list[NodeCandidate], policy: Policy, count: int, size: int) -> None:
    decision = scheduler.schedule(size=size, count=count, nodes=nodes, existing=[], policy=policy)
    placed = decision.placements
    assert len(placed) + decision.unplaced == count
    by_name = {n.name: n for n in nodes}
    if policy.node_anti_affinity == "hard":
        assert len({p.node for p in placed}) == len(placed)
    if policy.zone_anti_affinity == "hard":
        zones = [by_name[p.node].zone for p in placed if by_name[p.node].zone]
        assert len(set(zones)) == len(zones)
    promised: dict[tuple[str, str], int] = {}
    for p in placed:
        n = by_name[p.node]
        d = next(d for d in n.disks if d.path == p.disk)
        assert scheduler.node_refusal(n, policy) is None
        before = d.scheduled + promised.get((p.node, p.disk), 0)
        assert scheduler.disk_refusal(d, node=n.name, size=size, required=0, policy=policy, scheduled=before) is None
        promised[(p.node, p.disk)] = promised.get((p.node, p.disk), 0) + size
    # Every node and disk without a replica has exactly one reason.
    chosen = {(p.node, p.disk) for p in placed}
    explained = [(r.node, r.disk) for r in decision.refusals]
    assert len(explained) == len(set(explained))
    for n in nodes:
        if (n.name, "") in explained:
            assert not any(key[0] == n.name for key in chosen)
            continue
        for d in n.disks:
            assert ((n.name, d.path) in chosen) != ((n.name, d.path) in explained)
    # The same input gives the same answer.
    again = scheduler.schedule(size=size, count=count, nodes=list(reversed(nodes)), existing=[], policy=policy)
    assert again == decision
