"""MemoryStore (a Store in a dict, for controller tests) and check_store(factory), the conformance check that
every Store backend must pass, so SQLite and memory behave the same."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors
from metalhorn.control.store import base
from metalhorn.control.store import record as record_mod


@dataclasses.dataclass(frozen=True)
class _Stored:
    """A record with spec and status kept as JSON text, so every read hands out fresh copies (as SQLite does)."""

    record: record_mod.Record
    spec: str
    status: str

    @classmethod
    def of(cls, record: record_mod.Record) -> _Stored:
        return cls(
            record=record.with_(spec={}, status={}), spec=json.dumps(record.spec), status=json.dumps(record.status)
        )

    def load(self) -> record_mod.Record:
        return dataclasses.replace(self.record, spec=json.loads(self.spec), status=json.loads(self.status))

    @property
    def resource_version(self) -> int:
        return self.record.resource_version


class MemoryStore:
    def __init__(self, *, clock: clock_mod.Clock) -> None:
        self._clock = clock
        self._records: dict[tuple[str, str], _Stored] = {}
        self.writes = 0

    def get(self, kind: str, name: str) -> record_mod.Record:
        record_mod.check_key(kind, name)
        try:
            return self._records[(kind, name)].load()
        except KeyError:
            raise errors.NotFound(f"{kind} {name!r} does not exist") from None

    def list(self, kind: str, *, owner_id: str | None = None, volume: str | None = None) -> list[record_mod.Record]:
        record_mod.check_key(kind, "-")
        found = [
            stored.load()
            for (k, _), stored in self._records.items()
            if k == kind and (owner_id is None or stored.record.owner_id == owner_id)
        ]
        if volume is not None:
            found = [rec for rec in found if rec.spec.get("volume") == volume]
        return sorted(found, key=lambda rec: rec.name)

    def create(self, record: record_mod.Record) -> record_mod.Record:
        record_mod.check_key(record.kind, record.name)
        key = (record.kind, record.name)
        if key in self._records:
            raise errors.AlreadyExists(f"{record.kind} {record.name!r} already exists")
        now = self._clock.wall()
        stored = dataclasses.replace(record, resource_version=1, created_at=now, updated_at=now)
        self._records[key] = _Stored.of(stored)
        self.writes += 1
        return self._records[key].load()

    def update(self, record: record_mod.Record) -> record_mod.Record:
        record_mod.check_key(record.kind, record.name)
        key = (record.kind, record.name)
        current = self._records.get(key)
        if current is None:
            raise errors.NotFound(f"{record.kind} {record.name!r} does not exist")
        if current.resource_version != record.resource_version:
            raise errors.Conflict(f"{record.kind} {record.name!r} changed since version {record.resource_version}")
        stored = dataclasses.replace(
            record,
            resource_version=current.resource_version + 1,
            created_at=current.record.created_at,
            updated_at=self._clock.wall(),
        )
        self._records[key] = _Stored.of(stored)
        self.writes += 1
        return self._records[key].load()

    def delete(self, kind: str, name: str, *, resource_version: int | None = None) -> None:
        record_mod.check_key(kind, name)
        current = self._records.get((kind, name))
        if current is None:
            raise errors.NotFound(f"{kind} {name!r} does not exist")
        if resource_version is not None and resource_version != current.resource_version:
            raise errors.Conflict(f"{kind} {name!r} changed since version {resource_version}")
        del self._records[(kind, name)]
        self.writes += 1

    def close(self) -> None:
        pass


def check_store(factory: Callable[[], base.Store]) -> None:
    """The behaviour every Store backend shares. Raises AssertionError at the first difference."""
    store = factory()
    try:
        _check(store)
    finally:
        store.close()


def _expect(exc_type: type[errors.MetalhornError], call: Callable[[], object]) -> None:
    try:
        call()
    except exc_type:
        return
    raise AssertionError(f"expected {exc_type.__name__}")


def _check(store: base.Store) -> None:
    rec = record_mod.Record
    _expect(errors.NotFound, lambda: store.get("volume", "v1"))
    assert store.list("volume") == []

    created = store.create(rec(kind="volume", name="v1", spec={"size": 4096}, owner_id="n1"))
    assert created.resource_version == 1
    assert created.created_at == created.updated_at > 0
    assert store.get("volume", "v1") == created
    _expect(errors.AlreadyExists, lambda: store.create(rec(kind="volume", name="v1")))
    # The same name under another kind is another record.
    store.create(rec(kind="replica", name="v1", spec={"volume": "v1"}))

    # Copies: mutating what we read does not change what is stored.
    got = store.get("volume", "v1")
    got.spec["size"] = 1
    assert store.get("volume", "v1").spec == {"size": 4096}

    updated = store.update(created.with_(status={"state": "creating", "reasons": ["a", "b"]}))
    assert updated.resource_version == 2
    assert updated.created_at == created.created_at
    assert store.get("volume", "v1").status == {"state": "creating", "reasons": ["a", "b"]}
    # A writer holding version 1 lost the race.
    _expect(errors.Conflict, lambda: store.update(created.with_(spec={"size": 8192})))
    assert store.get("volume", "v1").spec == {"size": 4096}
    _expect(errors.NotFound, lambda: store.update(rec(kind="volume", name="ghost", resource_version=1)))

    store.create(rec(kind="volume", name="a0", owner_id="n2"))
    assert [r.name for r in store.list("volume")] == ["a0", "v1"]
    assert [r.name for r in store.list("volume", owner_id="n1")] == ["v1"]
    assert [r.name for r in store.list("replica")] == ["v1"]
    # Replicas of one volume (spec.volume), combinable with the owner.
    store.create(rec(kind="replica", name="v1-b", spec={"volume": "v1", "size": 1}, owner_id="n2"))
    store.create(rec(kind="replica", name="v10-a", spec={"volume": "v10"}, owner_id="n2"))
    store.create(rec(kind="replica", name="x", spec={}, owner_id="n2"))
    assert [r.name for r in store.list("replica", volume="v1")] == ["v1", "v1-b"]
    assert [r.name for r in store.list("replica", volume="v1", owner_id="n2")] == ["v1-b"]
    assert store.list("replica", volume="nothing") == []
    assert store.list("volume", volume="v1") == []

    _expect(errors.Conflict, lambda: store.delete("volume", "v1", resource_version=1))
    store.delete("volume", "v1", resource_version=2)
    _expect(errors.NotFound, lambda: store.get("volume", "v1"))
    _expect(errors.NotFound, lambda: store.delete("volume", "v1"))
    store.delete("volume", "a0")
    assert store.list("volume") == []
    # Bad keys are refused the same way everywhere.
    _expect(errors.InvalidArgument, lambda: store.get("nonsense", "x"))
    _expect(errors.InvalidArgument, lambda: store.create(rec(kind="volume", name="")))
