"""SqliteStore: the default store, one SQLite file (WAL mode) holding every record as JSON text.

Concurrency is optimistic: an update is `UPDATE ... WHERE resource_version = ?`; zero rows changed means the
record moved on (Conflict) or is gone (NotFound). Each call is one short transaction under a lock, so the
store is safe from the event loop and from worker threads alike.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sqlite3
import threading
from typing import Any

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors, logs
from metalhorn.control.store import record as record_mod

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX IF NOT EXISTS records_owner ON records (kind, owner_id);
CREATE INDEX IF NOT EXISTS records_volume ON records (kind, json_extract(spec, '$.volume'));
"""
_Row = tuple[Any, ...]
_Rows = list[_Row]
_COLUMNS = "kind, name, spec, status, owner_id, resource_version, created_at, updated_at"


class SqliteStore:
    def __init__(self, path: str | pathlib.Path, *, clock: clock_mod.Clock) -> None:
        self._path = pathlib.Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise errors.StorageIOError(f"store {self._path}: cannot open the SQLite file: {exc}") from exc
        log.info("store opened %s", logs.kv(path=self._path))

    def get(self, kind: str, name: str) -> record_mod.Record:
        record_mod.check_key(kind, name)
        with self._lock:
            row = self._query_one("SELECT " + _COLUMNS + " FROM records WHERE kind = ? AND name = ?", (kind, name))
        if row is None:
            raise errors.NotFound(f"{kind} {name!r} does not exist")
        return _to_record(row)

    def list(self, kind: str, *, owner_id: str | None = None, volume: str | None = None) -> list[record_mod.Record]:
        record_mod.check_key(kind, "-")
        sql = "SELECT " + _COLUMNS + " FROM records WHERE kind = ?"
        params: tuple[Any, ...] = (kind,)
        if owner_id is not None:
            sql += " AND owner_id = ?"
            params += (owner_id,)
        if volume is not None:
            sql += " AND json_extract(spec, '$.volume') = ?"  # the records_volume index
            params += (volume,)
        with self._lock:
            rows = self._query(sql + " ORDER BY name", params)
        return [_to_record(row) for row in rows]

    def create(self, record: record_mod.Record) -> record_mod.Record:
        record_mod.check_key(record.kind, record.name)
        now = self._clock.wall()
        stored = record.with_(resource_version=1, created_at=now, updated_at=now)
        with self._lock:
            try:
                self._execute(
                    "INSERT INTO records (" + _COLUMNS + ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _to_row(stored),
                )
            except sqlite3.IntegrityError:
                raise errors.AlreadyExists(
                    f"{record.kind} {record.name!r} already exists; pick another name or delete it first"
                ) from None
        return stored

    def update(self, record: record_mod.Record) -> record_mod.Record:
        record_mod.check_key(record.kind, record.name)
        with self._lock:
            row = self._query_one(
                "SELECT resource_version, created_at FROM records WHERE kind = ? AND name = ?",
                (record.kind, record.name),
            )
            if row is None:
                raise errors.NotFound(f"{record.kind} {record.name!r} does not exist")
            current, created_at = int(row[0]), float(row[1])
            if current != record.resource_version:
                raise _conflict(record.kind, record.name, record.resource_version, current)
            stored = record.with_(resource_version=current + 1, created_at=created_at, updated_at=self._clock.wall())
            cursor = self._execute(
                "UPDATE records SET spec = ?, status = ?, owner_id = ?, resource_version = ?, updated_at = ? "
                "WHERE kind = ? AND name = ? AND resource_version = ?",
                (
                    _dump(stored.spec),
                    _dump(stored.status),
                    stored.owner_id,
                    stored.resource_version,
                    stored.updated_at,
                    record.kind,
                    record.name,
                    current,
                ),
            )
            if cursor.rowcount != 1:  # another process wrote between our read and our write
                raise _conflict(record.kind, record.name, record.resource_version, None)
        return stored

    def delete(self, kind: str, name: str, *, resource_version: int | None = None) -> None:
        record_mod.check_key(kind, name)
        with self._lock:
            row = self._query_one("SELECT resource_version FROM records WHERE kind = ? AND name = ?", (kind, name))
            if row is None:
                raise errors.NotFound(f"{kind} {name!r} does not exist")
            current = int(row[0])
            if resource_version is not None and resource_version != current:
                raise _conflict(kind, name, resource_version, current)
            cursor = self._execute(
                "DELETE FROM records WHERE kind = ? AND name = ? AND resource_version = ?", (kind, name, current)
            )
            if cursor.rowcount != 1:
                raise _conflict(kind, name, resource_version or current, None)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise errors.StorageIOError(f"store {self._path}: {exc}") from exc

    def _query(self, sql: str, params: tuple[Any, ...]) -> _Rows:
        rows: _Rows = self._execute(sql, params).fetchall()
        return rows

    def _query_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._execute(sql, params).fetchone()
        return row


def _conflict(kind: str, name: str, given: int, current: int | None) -> errors.Conflict:
    now = f" (now {current})" if current is not None else ""
    return errors.Conflict(f"{kind} {name!r} changed since version {given}{now}; read it again and retry your change")


def _dump(value: record_mod.JSON) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _to_row(record: record_mod.Record) -> tuple[Any, ...]:
    return (
        record.kind,
        record.name,
        _dump(record.spec),
        _dump(record.status),
        record.owner_id,
        record.resource_version,
        record.created_at,
        record.updated_at,
    )


def _to_record(row: tuple[Any, ...]) -> record_mod.Record:
    return record_mod.Record(
        kind=row[0],
        name=row[1],
        spec=json.loads(row[2]),
        status=json.loads(row[3]),
        owner_id=row[4],
        resource_version=int(row[5]),
        created_at=float(row[6]),
        updated_at=float(row[7]),
    )
