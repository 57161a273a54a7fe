"""Typed reconcile results and the one generic runner that drives every controller (STYLE.md habit 5).

A controller is a function `reconcile(key) -> Success | Retry(delay) | Fatal(reason)` that reads the store,
compares intent with what it sees, and writes one step towards the intent. The Runner decides *when* to call
it: keys are queued with a due time; Success forgets the key until the next resync or wake-up, Retry comes
back after its delay, an exception comes back after exponential backoff (a Conflict -- someone else wrote the
record -- comes back at once, a few times, then backs off too), Fatal is logged and counted and waits for the
next resync. Time comes from an injected Clock, so tests drive `run_due()` with a FakeClock and no sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors, logs

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Success:
    pass


@dataclasses.dataclass(frozen=True)
class Retry:
    delay: float
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Fatal:
    reason: str


Result = Success | Retry | Fatal


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 30.0
    immediate_conflicts: int = 3  # a lost optimistic-concurrency race is retried at once this many times

    def delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based) after an error."""
        return float(min(self.maximum, self.initial * self.factor ** max(0, attempt - 1)))


@dataclasses.dataclass
class Stats:
    """Counters for /metrics: results by kind and errors by code."""

    success: int = 0
    retry: int = 0
    fatal: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)


class Runner:
    def __init__(
        self,
        *,
        name: str,
        reconcile: Callable[[str], Result],
        keys: Callable[[], Iterable[str]],
        clock: clock_mod.Clock,
        backoff: Backoff | None = None,
        resync_interval: float = 1.0,
    ) -> None:
        self.name = name
        self._reconcile = reconcile
        self._keys = keys
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._resync_interval = resync_interval
        self._due: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._last_resync: float | None = None
        self._wake = asyncio.Event()
        self.stats = Stats()
        self.last_fatal: dict[str, str] = {}

    def enqueue(self, key: str, *, delay: float = 0.0) -> None:
        """Ask for `key` to be reconciled after `delay` (an earlier request wins)."""
        due = self._clock.monotonic() + delay
        if key not in self._due or due < self._due[key]:
            self._due[key] = due

    def wake(self) -> None:
        """Something changed (an API write, an agent report): resync all keys now."""
        self._last_resync = None
        self._wake.set()

    def resync(self) -> None:
        self._last_resync = self._clock.monotonic()
        for key in self._keys():
            self.enqueue(key)

    def run_due(self) -> int:
        """Reconcile every key that is due now; returns how many calls were made."""
        now = self._clock.monotonic()
        if self._last_resync is None or now - self._last_resync >= self._resync_interval:
            self.resync()
        due = sorted((when, key) for key, when in self._due.items() if when <= now)
        for _, key in due:
            del self._due[key]
            self._step(key)
        return len(due)

    def next_due(self) -> float | None:
        """Seconds until the next queued key (or the next resync), never negative."""
        now = self._clock.monotonic()
        candidates = list(self._due.values())
        if self._last_resync is not None:
            candidates.append(self._last_resync + self._resync_interval)
        if not candidates:
            return None
        return max(0.0, min(candidates) - now)

    async def run(self) -> None:
        """Run until cancelled. Never raises on a controller's behalf: every failure is counted and retried."""
        while True:
            self.run_due()
            wait = self.next_due()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _step(self, key: str) -> None:
        try:
            result = self._reconcile(key)
        except errors.Conflict:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            self._count_error("CONFLICT")
            over = attempt - self._backoff.immediate_conflicts
            self.enqueue(key, delay=0.0 if over <= 0 else self._backoff.delay(over))
            return
        except Exception as exc:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            code = exc.code.name if isinstance(exc, errors.MetalhornError) else "INTERNAL"
            self._count_error(code)
            delay = self._backoff.delay(attempt)
            log.warning(
                "reconcile failed %s",
                logs.kv(controller=self.name, key=key, code=code, error=exc, attempt=attempt, retry_in=delay),
                exc_info=not isinstance(exc, errors.MetalhornError),
            )
            self.enqueue(key, delay=delay)
            return
        if isinstance(result, Success):
            self.stats.success += 1
            self._attempts.pop(key, None)
            self.last_fatal.pop(key, None)
        elif isinstance(result, Retry):
            self.stats.retry += 1
            self._attempts.pop(key, None)
            self.enqueue(key, delay=result.delay)
        else:
            self.stats.fatal += 1
            self._attempts.pop(key, None)
            if self.last_fatal.get(key) != result.reason:
                log.error("reconcile gave up %s", logs.kv(controller=self.name, key=key, reason=result.reason))
            self.last_fatal[key] = result.reason

    def _count_error(self, code: str) -> None:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
