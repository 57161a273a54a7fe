"""The Store protocol: what controllers, the API and the agent sync handler need from a backend.

Optimistic concurrency: every write bumps `resource_version`; `update` and `delete` with a version only
succeed when the stored record still has that version, else they raise errors.Conflict ("someone else won:
read again and retry"). Creating an existing key raises errors.AlreadyExists. Backends are synchronous: one
call is one short transaction, so a caller never holds a lock across an await.
"""

from __future__ import annotations

from typing import Protocol

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors
from metalhorn.control.store import record as record_mod


class Store(Protocol):
    def get(self, kind: str, name: str) -> record_mod.Record:
        """The record, or errors.NotFound."""
        ...

    def list(self, kind: str, *, owner_id: str | None = None, volume: str | None = None) -> list[record_mod.Record]:
        """Records of one kind sorted by name, optionally only those owned by `owner_id`, and only those whose
        `spec.volume` is `volume` (replica and engine records name their volume; backends index it, so a
        volume's reconcile pass does not read every replica of the cluster)."""
        ...

    def create(self, record: record_mod.Record) -> record_mod.Record:
        """Store a new record (version 1, timestamps set); errors.AlreadyExists if the key is taken."""
        ...

    def update(self, record: record_mod.Record) -> record_mod.Record:
        """Replace spec/status/owner_id if `record.resource_version` is current; errors.Conflict if stale,
        errors.NotFound if gone. Returns the stored record with the new version."""
        ...

    def delete(self, kind: str, name: str, *, resource_version: int | None = None) -> None:
        """Remove a record (errors.NotFound if absent; errors.Conflict if a given version is stale)."""
        ...

    def close(self) -> None: ...


def open_store(url: str, *, clock: clock_mod.Clock) -> Store:
    """Open a store from its URL: `sqlite:///PATH` (PATH absolute, e.g. sqlite:///var/lib/metalhorn/db)."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path:
            raise errors.InvalidArgument(f"store {url!r}: write sqlite:///PATH, e.g. sqlite:///var/lib/metalhorn.db")
        from metalhorn.control.store import sqlite

        return sqlite.SqliteStore(path, clock=clock)
    if url.startswith("etcd://"):
        raise errors.NotSupported(f"store {url!r}: etcd is not supported yet; use sqlite:///PATH")
    raise errors.InvalidArgument(f"store {url!r}: unknown scheme; use sqlite:///PATH")
