"""The manager's store: records with spec, status and a resource version (optimistic concurrency).

- record.py: Record (frozen), KINDS, the JSON shape the API returns.
- base.py:   the Store protocol every backend implements, and open_store(url).
- sqlite.py: SqliteStore, the default backend (`sqlite:///PATH`), one file, WAL mode.

metalhorn.testing.store has MemoryStore and check_store(factory), the conformance check run against every
backend so they behave the same.
"""
