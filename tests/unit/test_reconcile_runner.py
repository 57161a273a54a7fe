"""The generic reconcile runner: typed results, backoff, conflicts, resync -- driven by a FakeClock."""

from __future__ import annotations

import asyncio

import pytest

from metalhorn.common import errors
from metalhorn.control import reconcile
from metalhorn.testing import clock as fake_clock


class Script:
    """A reconcile function that answers from a per-key script and records its calls."""

    def __init__(self, answers: dict[str, list[object]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, key: str) -> reconcile.Result:
        self.calls.append(key)
        answer = self.answers[key].pop(0) if self.answers[key] else reconcile.Success()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, reconcile.Success | reconcile.Retry | reconcile.Fatal)
        return answer


def make(answers: dict[str, list[object]], **kw: object) -> tuple[reconcile.Runner, Script, fake_clock.FakeClock]:
    clock = fake_clock.FakeClock()
    script = Script(answers)
    runner = reconcile.Runner(
        name="t", reconcile=script, keys=lambda: sorted(answers), clock=clock, resync_interval=100.0, **kw
    )
    return runner, script, clock


def test_first_pass_reconciles_every_key_once() -> None:
    runner, script, _ = make({"a": [], "b": []})
    assert runner.run_due() == 2
    assert script.calls == ["a", "b"]
    assert runner.run_due() == 0
    assert runner.stats.success == 2


def test_retry_comes_back_after_its_delay_and_not_before() -> None:
    runner, script, clock = make({"a": [reconcile.Retry(5.0)]})
    runner.run_due()
    clock.advance(4.9)
    assert runner.run_due() == 0
    assert runner.next_due() == pytest.approx(0.1)
    clock.advance(0.1)
    assert runner.run_due() == 1
    assert script.calls == ["a", "a"]
    assert (runner.stats.retry, runner.stats.success) == (1, 1)


def test_errors_back_off_exponentially_and_success_resets() -> None:
    boom = errors.Unavailable("agent away")
    runner, script, clock = make({"a": [boom, boom, boom]}, backoff=reconcile.Backoff(initial=1.0, factor=2.0))
    runner.run_due()
    delays = []
    for _ in range(3):
        delays.append(runner.next_due())
        clock.advance(runner.next_due() or 0.0)
        runner.run_due()
    assert delays == [1.0, 2.0, 4.0]
    assert len(script.calls) == 4
    assert runner.stats.errors == {"UNAVAILABLE": 3}
    assert runner.stats.success == 1


def test_conflicts_are_retried_at_once_a_few_times_then_back_off() -> None:
    conflict = errors.Conflict("lost")
    runner, script, _ = make({"a": [conflict] * 4}, backoff=reconcile.Backoff(initial=1.0, immediate_conflicts=3))
    runner.run_due()
    runner.run_due()
    runner.run_due()
    assert len(script.calls) == 3
    runner.run_due()  # third conflict was the last immediate one; the fourth call backs off
    assert len(script.calls) == 4
    assert runner.next_due() == 1.0


def test_unexpected_exceptions_are_counted_as_internal_and_retried() -> None:
    runner, _, clock = make({"a": [KeyError("x")]})
    runner.run_due()
    assert runner.stats.errors == {"INTERNAL": 1}
    clock.advance(runner.next_due() or 0.0)
    assert runner.run_due() == 1


def test_fatal_waits_for_the_next_resync() -> None:
    runner, script, clock = make({"a": [reconcile.Fatal("bad spec")]})
    runner.run_due()
    assert runner.last_fatal == {"a": "bad spec"}
    clock.advance(99.0)
    assert runner.run_due() == 0
    clock.advance(1.0)
    assert runner.run_due() == 1
    assert runner.last_fatal == {}
    assert script.calls == ["a", "a"]


def test_wake_resyncs_at_once() -> None:
    runner, script, _ = make({"a": []})
    runner.run_due()
    runner.wake()
    assert runner.run_due() == 1
    assert script.calls == ["a", "a"]


async def test_run_loop_reconciles_and_is_cancellable() -> None:
    calls: list[str] = []
    seen = asyncio.Event()

    def rec(key: str) -> reconcile.Result:
        calls.append(key)
        seen.set()
        return reconcile.Success()

    from metalhorn.common import clock

    runner = reconcile.Runner(name="t", reconcile=rec, keys=lambda: ["k"], clock=clock.SystemClock())
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(seen.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls[0] == "k"
