"""One agent sync: the agent's report goes into the store, the answer is what that node must run.

The first sync registers the node (its zone, tags and disks as the agent reports them); later syncs refresh the
heartbeat, the disks' capacity and the reported state of each replica and engine on the node. Reported status
is merged into the records (fields the controllers own, like `failed_at`, are kept). The answer lists the
replica and engine records desired on the node, each engine with `spec.replica_addresses` resolved from its
replicas' reported addresses, plus the node record (its spec names the disks the manager wants).

Returns whether anything material changed, so the caller wakes the controllers only then.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors
from metalhorn.control.store import base
from metalhorn.control.store import record as record_mod

REPLICA_FIELDS = ("state", "address", "pid", "error")
ENGINE_FIELDS = ("state", "endpoint", "block_device", "replicas", "rebuild", "pid", "error")
_ATTEMPTS = 5  # optimistic-concurrency retries per record before giving up on this sync


@dataclasses.dataclass(frozen=True)
class Outcome:
    answer: dict[str, Any]
    changed: bool


def sync(store: base.Store, *, node: str, report: dict[str, Any], clock: clock_mod.Clock) -> Outcome:
    changed = _update_node(store, node=node, report=report, now=clock.wall())
    replicas, engines = _on_node(store, node)
    changed |= _merge_status(store, replicas, report.get("replicas") or {}, REPLICA_FIELDS)
    changed |= _merge_status(store, engines, report.get("engines") or {}, ENGINE_FIELDS)
    replicas, engines = _on_node(store, node)
    answer = {
        "node": store.get("node", node).to_json(),
        "replicas": [r.to_json() for r in replicas],
        "engines": [_with_addresses(store, e) for e in engines],
    }
    return Outcome(answer=answer, changed=changed)


def _on_node(store: base.Store, node: str) -> tuple[list[record_mod.Record], list[record_mod.Record]]:
    """The node's replica and engine records. The volume controller creates them owned by their node
    (owner_id), so the store's owner index finds them without reading every record of the cluster; records
    nobody owns are still matched by spec.node."""

    def on_node(kind: str) -> list[record_mod.Record]:
        found = store.list(kind, owner_id=node) + store.list(kind, owner_id="")
        return sorted((r for r in found if r.spec.get("node") == node), key=lambda r: r.name)

    return on_node("replica"), on_node("engine")


def _update_node(store: base.Store, *, node: str, report: dict[str, Any], now: float) -> bool:
    disks = report.get("disks") or {}
    for _ in range(_ATTEMPTS):
        try:
            record = store.get("node", node)
        except errors.NotFound:
            record = None
        if record is None:
            spec = {
                "tags": list(report.get("tags") or []),
                "zone": str(report.get("zone") or ""),
                "schedulable": True,
                "disks": {
                    path: {"tags": list(d.get("tags") or []), "schedulable": True, "reserved": 0}
                    for path, d in disks.items()
                },
            }
            record = record_mod.Record(kind="node", name=node, spec=spec, owner_id=node)
        old_status = record.status
        old_disks = old_status.get("disks") or {}
        status = {
            **old_status,
            "ready": True,
            "last_heartbeat": now,
            "address": str(report.get("address") or ""),
            "agent_url": str(report.get("agent_url") or ""),
            "disks": {
                path: {
                    "capacity": int(d.get("capacity") or 0),
                    "available": int(d.get("available") or 0),
                    "scheduled": int((old_disks.get(path) or {}).get("scheduled") or 0),
                }
                for path, d in disks.items()
            },
            "reasons": [],
        }
        changed = {k: v for k, v in status.items() if k != "last_heartbeat"} != {
            k: v for k, v in old_status.items() if k != "last_heartbeat"
        }
        try:
            if record.resource_version == 0:
                store.create(record.with_(status=status))
                return True
            store.update(record.with_(status=status))
            return changed
        except (errors.Conflict, errors.AlreadyExists):
            continue
    raise errors.Conflict(f"node {node} is being changed by others; the agent retries at its next sync")


def _merge_status(
    store: base.Store, records: list[record_mod.Record], reported: dict[str, Any], fields: tuple[str, ...]
) -> bool:
    changed = False
    for record in records:
        item = reported.get(record.name)
        if not isinstance(item, dict):
            # The agent runs every instance it was given; one it does not report is not running (yet), e.g.
            # right after the agent restarted. Never leave a stale "running" (and its endpoint) behind.
            if current_state(record) in ("", "pending", "stopped", "failed"):
                continue
            item = {"state": "pending", "pid": None}
        for attempt in range(_ATTEMPTS):
            current = record if attempt == 0 else _reread(store, record)
            if current is None:
                break
            status = dict(current.status)
            for field in fields:
                if field in item:
                    status[field] = item[field]
            if status == current.status:
                break
            try:
                store.update(current.with_(status=status))
            except errors.Conflict:
                continue
            except errors.NotFound:
                break
            changed |= any(status.get(f) != current.status.get(f) for f in fields if f != "pid")
            break
    return changed


def current_state(record: record_mod.Record) -> str:
    return str(record.status.get("state") or "")


def _reread(store: base.Store, record: record_mod.Record) -> record_mod.Record | None:
    try:
        return store.get(record.kind, record.name)
    except errors.NotFound:
        return None


def _with_addresses(store: base.Store, engine: record_mod.Record) -> dict[str, Any]:
    """The engine record as the agent needs it: replica names resolved to their reported addresses."""
    body = engine.to_json()
    addresses = []
    for name in engine.spec.get("replicas") or []:
        try:
            replica = store.get("replica", str(name))
        except errors.NotFound:
            continue
        address = replica.status.get("address")
        if address:
            addresses.append(str(address))
    body["spec"]["replica_addresses"] = addresses
    return body
