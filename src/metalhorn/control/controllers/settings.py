"""Cluster settings: one record `setting/global` whose spec overrides these defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from metalhorn.common import errors
from metalhorn.control.store import base
from metalhorn.control.store import record as record_mod

KIND = "setting"
NAME = "global"


@dataclasses.dataclass(frozen=True)
class Settings:
    replica_replenishment_wait: float = 60.0  # seconds a failed replica may come back before it is replaced
    over_provisioning_percentage: int = 100
    minimal_available_percentage: int = 25
    node_down_after: float = 10.0  # seconds without an agent sync before its node is down


FIELDS = {field.name: field.type for field in dataclasses.fields(Settings)}


def from_spec(spec: dict[str, Any]) -> Settings:
    """Settings from a record spec; unknown keys are ignored, bad values refused with the key named."""
    values: dict[str, Any] = {}
    defaults = Settings()
    for name in FIELDS:
        if name not in spec:
            continue
        value = spec[name]
        kind = type(getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise errors.InvalidArgument(f"setting {name} must be a non-negative number, not {value!r}")
        values[name] = kind(value)
    return Settings(**values)


def load(store: base.Store) -> Settings:
    try:
        record = store.get(KIND, NAME)
    except errors.NotFound:
        return Settings()
    try:
        return from_spec(record.spec)
    except errors.InvalidArgument:
        return Settings()


def save(store: base.Store, changes: dict[str, Any]) -> record_mod.Record:
    """Merge `changes` into the stored settings (validated first); creates the record on first use."""
    try:
        record = store.get(KIND, NAME)
    except errors.NotFound:
        record = None
    merged = {**(record.spec if record else {}), **changes}
    from_spec(merged)
    if record is None:
        return store.create(record_mod.Record(kind=KIND, name=NAME, spec=merged))
    return store.update(record.with_(spec=merged))


def as_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
