"""Start-up consistency: which replicas an engine trusts when some died mid-write (policy.at_start)."""

from __future__ import annotations

import pytest

from metalhorn.storage.engine import policy
from metalhorn.storage.engine.policy import Mode

SIZE = 1 << 20
CHAIN = ("volume-snap-a.img",)


def state(revision: int, *, unclean: bool = False, chain: tuple[str, ...] = CHAIN) -> policy.ReplicaState:
    return policy.ReplicaState(size=SIZE, revision=revision, chain=chain, unclean=unclean)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param({"a": state(5), "b": state(5), "c": state(5)}, "RW RW RW", id="all-clean-equal"),
        pytest.param({"a": state(5), "b": state(4), "c": state(5)}, "RW ERR RW", id="stale"),
        pytest.param({"a": state(5, unclean=True), "b": state(5), "c": state(5)}, "ERR RW RW", id="unclean-tie"),
        pytest.param(
            {"a": state(5, unclean=True), "b": state(5, unclean=True), "c": state(4)}, "RW ERR ERR", id="all-unclean"
        ),
        pytest.param({"a": state(4), "b": state(6, unclean=True), "c": state(5)}, "ERR RW ERR", id="unclean-newest"),
        pytest.param(
            {"a": state(5, chain=()), "b": state(5, unclean=True), "c": state(5, unclean=True)},
            "ERR RW ERR",
            id="chain-majority-then-unclean",
        ),
    ],
)
def test_at_start_trusts_only_copies_that_cannot_disagree(
    states: dict[str, policy.ReplicaState], expected: str
) -> None:
    plan = policy.at_start(states, size=SIZE)
    assert plan.error is None
    assert " ".join(plan.modes[name].value for name in states) == expected
    for name, mode in plan.modes.items():
        assert bool(plan.reasons[name]) == (mode is Mode.ERR)


def test_unclean_reason_says_why() -> None:
    plan = policy.at_start({"a": state(3), "b": state(3, unclean=True)}, size=SIZE)
    assert plan.reasons["b"].startswith("unclean")
