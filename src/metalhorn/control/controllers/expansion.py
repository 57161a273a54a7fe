"""Expansion progress of a volume, from its replica records. Pure: records in, values out.

Expanding a detached volume gives each replica record the new size; the agent then replaces the replica's
process with one serving the new size. A replica counts as expanded once its agent reports it running under a
*different* PID than the one it had when its record was resized: before that, a "running" report may still be
the old process. The volume controller writes the marker (`status.expanding`: {from_size, from_pid}) together
with the new size, and drops it once the replica is expanded. The volume's status then shows
`expansion: {size, done, total}` (replicas) while any marker remains, and `size`: the size every replica serves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from metalhorn.control.store import record as record_mod

MARKER = "expanding"


def mark(replica: record_mod.Record, *, size: int) -> record_mod.Record:
    """The replica record resized to `size`, remembering what it served before (kept across several resizes)."""
    status = dict(replica.status)
    if MARKER not in status:
        status[MARKER] = {"from_size": _int(replica.spec.get("size")), "from_pid": replica.status.get("pid")}
    return replica.with_(spec={**replica.spec, "size": size}, status=status)


def expanded(replica: record_mod.Record) -> bool:
    """The replica's agent reports a new process of it running (so it serves the size of its record)."""
    marker = replica.status.get(MARKER)
    if not isinstance(marker, Mapping):
        return True
    pid = replica.status.get("pid")
    return replica.status.get("state") == "running" and pid is not None and pid != marker.get("from_pid")


def cleared(replica: record_mod.Record) -> record_mod.Record:
    return replica.with_(status={k: v for k, v in replica.status.items() if k != MARKER})


@dataclasses.dataclass(frozen=True)
class Progress:
    size: int  # what every replica serves now
    expansion: dict[str, int] | None  # {size, done, total} while replicas still restart with the new size


def progress(replicas: Sequence[record_mod.Record], *, size: int) -> Progress:
    """The volume's `size` and `expansion` status fields for its replica records and its wanted size."""
    waiting = [r for r in replicas if isinstance(r.status.get(MARKER), Mapping)]
    if not waiting:
        return Progress(size=size, expansion=None)
    served = min(_int(r.status[MARKER].get("from_size")) for r in waiting)
    return Progress(
        size=served,
        expansion={"size": size, "done": len(replicas) - len(waiting), "total": len(replicas)},
    )


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
