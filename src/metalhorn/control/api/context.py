"""The objects every route needs, handed to create_app by the daemon (no module globals)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from metalhorn.common import clock as clock_mod
from metalhorn.control.store import base


def _no_wake(kind: str) -> None:
    del kind


def _no_metrics() -> str:
    return ""


@dataclasses.dataclass(frozen=True)
class Context:
    store: base.Store
    clock: clock_mod.Clock
    token: str
    on_change: Callable[[str], None] = _no_wake  # called with the kind of record the API wrote
    metrics: Callable[[], str] = _no_metrics  # Prometheus text exposition
