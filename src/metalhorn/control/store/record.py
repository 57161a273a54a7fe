"""One stored record: intent (`spec`, written by the API), observation (`status`, written by controllers and
agents), and the resource version that makes concurrent writers safe.

Records are frozen; `spec` and `status` are plain JSON values. A store hands out deep copies, so changing a
record you read never changes what is stored: write it back with ``store.update(record.with_(...))``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from metalhorn.common import errors

# lbconfig: the applied MetalLB documents (one record); service: LoadBalancer services; announcement: per-node
# L2/BGP announcement reports (see control/controllers/lbrecords.py).
KINDS = ("volume", "node", "replica", "engine", "setting", "lbconfig", "service", "announcement")

JSON = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Record:
    kind: str
    name: str
    spec: JSON = dataclasses.field(default_factory=dict)
    status: JSON = dataclasses.field(default_factory=dict)
    owner_id: str = ""
    resource_version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    def with_(self, **changes: Any) -> Record:
        """A copy with some fields replaced (spec/status are deep-copied, so the copy owns them)."""
        if "spec" not in changes:
            changes["spec"] = _copy(self.spec)
        if "status" not in changes:
            changes["status"] = _copy(self.status)
        return dataclasses.replace(self, **changes)

    def to_json(self) -> JSON:
        return {
            "kind": self.kind,
            "name": self.name,
            "spec": _copy(self.spec),
            "status": _copy(self.status),
            "owner_id": self.owner_id,
            "resource_version": self.resource_version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _copy(value: JSON) -> JSON:
    """A deep copy of a JSON value (json round trip: several times faster than copy.deepcopy)."""
    copied: JSON = json.loads(json.dumps(value))
    return copied


def check_key(kind: str, name: str) -> None:
    """Reject keys no record can have (the API validates names more strictly, with the field named)."""
    if kind not in KINDS:
        raise errors.InvalidArgument(f"unknown record kind {kind!r}; kinds are {', '.join(KINDS)}")
    if not name or not isinstance(name, str):
        raise errors.InvalidArgument(f"a {kind} record needs a non-empty name")
