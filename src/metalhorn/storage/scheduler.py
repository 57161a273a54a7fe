"""Where a volume's new replicas go: a pure function of the cluster's nodes, disks and the volume's policy.

The manager's volume controller gathers the facts (nodes with their disks, the replicas the volume keeps) and
calls `schedule`; the answer says where each new replica goes and, for every node and disk that was not chosen,
why -- the volume's ``status.scheduling`` shows those reasons, so "why is my volume degraded" has an answer.

The rules follow Longhorn's replica scheduler (longhorn-manager ``scheduler/replica_scheduler.go``):

1. A node must be ready, schedulable and carry every tag of ``node_selector``; a disk must be schedulable and carry
   every tag of ``disk_selector``.
2. Space, per disk, with ``required`` = the data a replica must copy (0 for a new volume, the volume's actual size
   when a replica is replenished):
   - minimal available: ``available - required > capacity * minimal_available_percentage / 100`` (strictly
     greater: Longhorn refuses at equality), so a disk is never filled to the brim;
   - over-provisioning: ``scheduled + size <= (capacity - reserved) * over_provisioning_percentage / 100``, where
     ``scheduled`` is the bytes already promised to replicas on that disk (thin volumes promise their full size).
   A disk reporting no capacity or no available space is refused outright.
3. Anti-affinity. Each fitting disk gets a rank ``(node reused, zone reused, disk reused)``; *hard* node
   anti-affinity drops every disk on a node that already holds a replica of this volume, *hard* zone
   anti-affinity every disk in a zone that does. The best rank wins: an unused node in an unused zone first, then
   an unused node in a used zone, then (soft node anti-affinity only) a used node, a used disk last. A node
   without a zone ("") is its own zone: zone anti-affinity never binds it.
4. Data locality ``best-effort``: when ``local_node`` holds no replica yet and has a disk in the best rank, the
   replica goes there. ``strict-local``: the volume has exactly one replica and it lives on ``local_node``.
5. Among equal candidates the disk with the most free schedulable space (over-provisioning limit minus
   scheduled) wins; ties go to the smaller (node, path), so the answer is deterministic.

Replicas are placed one at a time; each placement counts for the next (its node and zone become used, its disk
gets ``size`` more scheduled and ``required`` less available). The ``scheduled`` and ``available`` the caller
passes must already include the volume's existing replicas; ``existing`` lists only the replicas the volume
keeps (not failed ones being replaced), since they are what anti-affinity spreads away from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Literal

from metalhorn.common import errors, units

Strength = Literal["hard", "soft"]
DataLocality = Literal["disabled", "best-effort", "strict-local"]


@dataclasses.dataclass(frozen=True)
class DiskCandidate:
    path: str
    capacity: int  # total bytes of the filesystem (Longhorn's StorageMaximum)
    available: int  # free bytes right now
    scheduled: int = 0  # bytes already promised to replicas on this disk
    tags: Collection[str] = ()
    schedulable: bool = True
    reserved: int = 0  # bytes kept for others; shrinks the over-provisioning base


@dataclasses.dataclass(frozen=True)
class NodeCandidate:
    name: str
    zone: str = ""
    tags: Collection[str] = ()
    ready: bool = True
    schedulable: bool = True
    disks: tuple[DiskCandidate, ...] = ()


@dataclasses.dataclass(frozen=True)
class Placement:
    node: str
    disk: str  # the disk's path on that node


@dataclasses.dataclass(frozen=True)
class Policy:
    """A volume's scheduling wish plus the cluster settings that bound it; validated once, here."""

    node_anti_affinity: Strength = "hard"
    zone_anti_affinity: Strength = "soft"
    node_selector: Collection[str] = ()
    disk_selector: Collection[str] = ()
    over_provisioning_percentage: int = 100
    minimal_available_percentage: int = 25
    data_locality: DataLocality = "disabled"
    local_node: str = ""

    def __post_init__(self) -> None:
        for field in ("node_anti_affinity", "zone_anti_affinity"):
            if getattr(self, field) not in ("hard", "soft"):
                raise errors.InvalidArgument(f"{field} must be 'hard' or 'soft', not {getattr(self, field)!r}")
        if self.data_locality not in ("disabled", "best-effort", "strict-local"):
            raise errors.InvalidArgument(
                f"data_locality must be 'disabled', 'best-effort' or 'strict-local', not {self.data_locality!r}"
            )
        if self.data_locality == "strict-local" and not self.local_node:
            raise errors.InvalidArgument("strict-local data locality needs local_node: attach the volume to a node")
        if self.over_provisioning_percentage <= 0:
            raise errors.InvalidArgument(
                f"over_provisioning_percentage must be positive, not {self.over_provisioning_percentage}"
            )
        if not 0 <= self.minimal_available_percentage < 100:
            raise errors.InvalidArgument(
                f"minimal_available_percentage must be in 0..99, not {self.minimal_available_percentage}"
            )


@dataclasses.dataclass(frozen=True)
class Refusal:
    node: str
    disk: str  # "" when the whole node was refused
    reason: str


@dataclasses.dataclass(frozen=True)
class Decision:
    placements: tuple[Placement, ...]  # the NEW replicas, at most `count`
    refusals: tuple[Refusal, ...]  # one per node or disk not chosen, sorted by (node, disk)
    unplaced: int = 0  # how many of `count` found no disk

    @property
    def complete(self) -> bool:
        return self.unplaced == 0


@dataclasses.dataclass
class _DiskState:
    """The mutable view of one disk during one `schedule` call."""

    node: NodeCandidate
    disk: DiskCandidate
    scheduled: int
    available: int


def limit(disk: DiskCandidate, *, over_provisioning_percentage: int) -> int:
    """The most bytes that may be promised to replicas on `disk`."""
    return (disk.capacity - disk.reserved) * over_provisioning_percentage // 100


def node_refusal(node: NodeCandidate, policy: Policy) -> str | None:
    """Why `node` can take no replica of a volume with `policy`, whatever its disks; None if it can."""
    if not node.ready:
        return f"node {node.name} is down"
    if not node.schedulable:
        return f"node {node.name} is unschedulable"
    if policy.data_locality == "strict-local" and node.name != policy.local_node:
        return f"node {node.name} is not the local node {policy.local_node} (strict-local data locality)"
    missing = _missing(policy.node_selector, node.tags)
    if missing:
        return f"node {node.name} lacks {missing}"
    if not node.disks:
        return f"node {node.name} has no disks"
    return None


def disk_refusal(
    disk: DiskCandidate,
    *,
    node: str,
    size: int,
    required: int,
    policy: Policy,
    scheduled: int | None = None,
    available: int | None = None,
) -> str | None:
    """Why `disk` cannot take a replica of `size` bytes copying `required` bytes; None if it fits.

    `scheduled` and `available` override the disk's own figures (placements made earlier in the same call).
    """
    scheduled = disk.scheduled if scheduled is None else scheduled
    available = disk.available if available is None else available
    where = f"disk {disk.path} on {node}"
    if not disk.schedulable:
        return f"{where} is unschedulable"
    missing = _missing(policy.disk_selector, disk.tags)
    if missing:
        return f"{where} lacks {missing}"
    if disk.capacity <= 0:
        return f"{where} reports no capacity"
    if available <= 0:
        return f"{where} has no available space"
    after = available - required
    minimal = disk.capacity * policy.minimal_available_percentage // 100
    if after <= minimal:
        after_text = f"{max(after, 0) * 100 // disk.capacity}%"
        if required:
            after_text += f" after copying {units.format_size(required)}"
        return (
            f"{where}: available {after_text} is not above the minimal "
            f"{policy.minimal_available_percentage}% ({units.format_size(minimal)})"
        )
    most = limit(disk, over_provisioning_percentage=policy.over_provisioning_percentage)
    if scheduled + size > most:
        return (
            f"{where}: {units.format_size(scheduled)} scheduled + {units.format_size(size)} would exceed "
            f"{policy.over_provisioning_percentage}% over-provisioning of {units.format_size(most)}"
        )
    return None


def schedule(
    *,
    size: int,
    count: int,
    nodes: Sequence[NodeCandidate],
    existing: Sequence[Placement],
    policy: Policy,
    required: int = 0,
) -> Decision:
    """Place `count` new replicas of a `size`-byte volume; see the module docstring for the rules.

    `required` is the data each new replica must receive (Longhorn's actual size): 0 for a new volume.
    Raises InvalidArgument for impossible input (non-positive size, duplicate node names or disk paths,
    strict-local with more than one replica); a cluster that cannot take the replicas is not an error but a
    Decision with `unplaced` > 0 and the reasons.
    """
    if size <= 0:
        raise errors.InvalidArgument(f"replica size must be positive, not {size}")
    if count < 0:
        raise errors.InvalidArgument(f"replica count must not be negative, not {count}")
    if required < 0:
        raise errors.InvalidArgument(f"required bytes must not be negative, not {required}")
    if policy.data_locality == "strict-local" and len(existing) + count > 1:
        raise errors.InvalidArgument(
            "strict-local data locality allows exactly one replica; set the volume's replicas to 1"
        )
    by_name: dict[str, NodeCandidate] = {}
    for node in nodes:
        if node.name in by_name:
            raise errors.InvalidArgument(f"node {node.name} is listed twice")
        by_name[node.name] = node
        paths = [d.path for d in node.disks]
        if len(set(paths)) != len(paths):
            raise errors.InvalidArgument(f"node {node.name} lists a disk path twice")

    states = {
        (node.name, disk.path): _DiskState(node, disk, disk.scheduled, disk.available)
        for node in sorted(nodes, key=lambda n: n.name)
        if node_refusal(node, policy) is None
        for disk in sorted(node.disks, key=lambda d: d.path)
    }
    placed = list(existing)
    new: list[Placement] = []
    for _ in range(count):
        key = _pick(states, placed, by_name, size=size, required=required, policy=policy)
        if key is None:
            break
        state = states[key]
        state.scheduled += size
        state.available -= required
        placement = Placement(node=key[0], disk=key[1])
        placed.append(placement)
        new.append(placement)
    refusals = _explain(nodes, states, placed, new, by_name, size=size, required=required, policy=policy)
    return Decision(placements=tuple(new), refusals=tuple(refusals), unplaced=count - len(new))


def _missing(selector: Collection[str], tags: Collection[str]) -> str:
    """'' when every selector tag is in tags, else 'tag ssd' / 'tags fast, ssd'."""
    missing = sorted(set(selector) - set(tags))
    if not missing:
        return ""
    return ("tag " if len(missing) == 1 else "tags ") + ", ".join(missing)


def _usage(
    placed: Sequence[Placement], by_name: dict[str, NodeCandidate]
) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    nodes = {p.node for p in placed}
    zones = {by_name[p.node].zone for p in placed if p.node in by_name and by_name[p.node].zone}
    disks = {(p.node, p.disk) for p in placed}
    return nodes, zones, disks


def _rank(
    state: _DiskState, used: tuple[set[str], set[str], set[tuple[str, str]]], policy: Policy
) -> tuple[bool, bool, bool] | None:
    """(node reused, zone reused, disk reused) for a fitting disk, or None if hard anti-affinity forbids it."""
    nodes, zones, disks = used
    node_reused = state.node.name in nodes
    zone_reused = bool(state.node.zone) and state.node.zone in zones
    if node_reused and policy.node_anti_affinity == "hard":
        return None
    if zone_reused and policy.zone_anti_affinity == "hard":
        return None
    return (node_reused, zone_reused, (state.node.name, state.disk.path) in disks)


def _pick(
    states: dict[tuple[str, str], _DiskState],
    placed: Sequence[Placement],
    by_name: dict[str, NodeCandidate],
    *,
    size: int,
    required: int,
    policy: Policy,
) -> tuple[str, str] | None:
    used = _usage(placed, by_name)
    ranked: list[tuple[tuple[bool, bool, bool], tuple[str, str], _DiskState]] = []
    for key, state in states.items():
        if _fits(state, size=size, required=required, policy=policy):
            rank = _rank(state, used, policy)
            if rank is not None:
                ranked.append((rank, key, state))
    if not ranked:
        return None
    best = min(rank for rank, _, _ in ranked)
    tier = [(key, state) for rank, key, state in ranked if rank == best]
    if policy.data_locality == "best-effort" and policy.local_node and policy.local_node not in used[0]:
        local = [(key, state) for key, state in tier if key[0] == policy.local_node]
        tier = local or tier

    def preference(item: tuple[tuple[str, str], _DiskState]) -> tuple[int, tuple[str, str]]:
        key, state = item
        headroom = limit(state.disk, over_provisioning_percentage=policy.over_provisioning_percentage)
        return (-(headroom - state.scheduled), key)

    return min(tier, key=preference)[0]


def _fits(state: _DiskState, *, size: int, required: int, policy: Policy) -> bool:
    reason = disk_refusal(
        state.disk,
        node=state.node.name,
        size=size,
        required=required,
        policy=policy,
        scheduled=state.scheduled,
        available=state.available,
    )
    return reason is None


def _explain(
    nodes: Sequence[NodeCandidate],
    states: dict[tuple[str, str], _DiskState],
    placed: Sequence[Placement],
    new: Sequence[Placement],
    by_name: dict[str, NodeCandidate],
    *,
    size: int,
    required: int,
    policy: Policy,
) -> list[Refusal]:
    """One reason for every node and disk that holds no replica of this volume after the decision."""
    used_nodes, used_zones, used_disks = _usage(placed, by_name)
    refusals: list[Refusal] = []
    for node in sorted(nodes, key=lambda n: n.name):
        reason = node_refusal(node, policy)
        if reason is not None:
            refusals.append(Refusal(node=node.name, disk="", reason=reason))
            continue
        for disk in sorted(node.disks, key=lambda d: d.path):
            if (node.name, disk.path) in used_disks:
                continue
            state = states[(node.name, disk.path)]
            reason = disk_refusal(
                disk,
                node=node.name,
                size=size,
                required=required,
                policy=policy,
                scheduled=state.scheduled,
                available=state.available,
            )
            if reason is None:
                reason = _why_not_chosen(
                    node, disk=disk, used_nodes=used_nodes, used_zones=used_zones, new=new, policy=policy
                )
            refusals.append(Refusal(node=node.name, disk=disk.path, reason=reason))
    return refusals


def _why_not_chosen(
    node: NodeCandidate,
    *,
    disk: DiskCandidate,
    used_nodes: set[str],
    used_zones: set[str],
    new: Sequence[Placement],
    policy: Policy,
) -> str:
    """The reason for a disk that fits on its own: anti-affinity, or others ranked higher."""
    where = f"disk {disk.path} on {node.name}"
    if node.name in used_nodes:
        if policy.node_anti_affinity == "hard":
            return f"node {node.name} already holds a replica of this volume (hard anti-affinity)"
        return f"{where}: node {node.name} already holds a replica of this volume; soft anti-affinity preferred others"
    if node.zone and node.zone in used_zones:
        if policy.zone_anti_affinity == "hard":
            return (
                f"zone {node.zone} of node {node.name} already holds a replica of this volume (hard zone anti-affinity)"
            )
        return (
            f"{where}: zone {node.zone} already holds a replica of this volume; "
            "soft zone anti-affinity preferred others"
        )
    if not new:
        return f"{where} fits, but no new replica was needed"
    return f"{where} fits, but other disks ranked higher (data locality, then free space)"
