"""Store records -> the pure scheduler's inputs (storage/scheduler.py). Pure: values in, values out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from metalhorn.control.controllers import settings as settings_mod
from metalhorn.control.store import record as record_mod
from metalhorn.storage import scheduler


def scheduled_bytes(replicas: Iterable[record_mod.Record]) -> dict[tuple[str, str], int]:
    """Bytes promised to replicas per (node, disk)."""
    used: dict[tuple[str, str], int] = {}
    for replica in replicas:
        key = (str(replica.spec.get("node", "")), str(replica.spec.get("disk", "")))
        used[key] = used.get(key, 0) + _int(replica.spec.get("size"))
    return used


def node_candidate(node: record_mod.Record, *, scheduled: dict[tuple[str, str], int]) -> scheduler.NodeCandidate:
    spec, status = node.spec, node.status
    reported: dict[str, Any] = status.get("disks") or {}
    wanted: dict[str, Any] = spec.get("disks") or {}
    disks = []
    for path in sorted(set(reported) | set(wanted)):
        facts = reported.get(path) or {}
        wish = wanted.get(path) or {}
        disks.append(
            scheduler.DiskCandidate(
                path=path,
                capacity=_int(facts.get("capacity")),
                available=_int(facts.get("available")),
                scheduled=scheduled.get((node.name, path), 0),
                tags=tuple(wish.get("tags") or facts.get("tags") or ()),
                schedulable=bool(wish.get("schedulable", True)) and path in reported,
                reserved=_int(wish.get("reserved")),
            )
        )
    return scheduler.NodeCandidate(
        name=node.name,
        zone=str(spec.get("zone", "")),
        tags=tuple(spec.get("tags") or ()),
        ready=bool(status.get("ready", False)),
        schedulable=bool(spec.get("schedulable", True)),
        disks=tuple(disks),
    )


def policy(volume: record_mod.Record, settings: settings_mod.Settings) -> scheduler.Policy:
    spec = volume.spec
    return scheduler.Policy(
        node_anti_affinity=spec.get("replica_anti_affinity", "hard"),
        zone_anti_affinity=spec.get("zone_anti_affinity", "soft"),
        node_selector=tuple(spec.get("node_selector") or ()),
        disk_selector=tuple(spec.get("disk_selector") or ()),
        over_provisioning_percentage=settings.over_provisioning_percentage,
        minimal_available_percentage=settings.minimal_available_percentage,
        data_locality=spec.get("data_locality", "disabled"),
        local_node=str(spec.get("attach_node", "")),
    )


def placements(replicas: Sequence[record_mod.Record]) -> list[scheduler.Placement]:
    return [scheduler.Placement(node=str(r.spec.get("node", "")), disk=str(r.spec.get("disk", ""))) for r in replicas]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
