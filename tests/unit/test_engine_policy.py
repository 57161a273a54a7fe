"""Table tests of the pure replica-mode policy: one row per rule, plus stateful sequences and the edge table."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from metalhorn.common import errors
from metalhorn.storage.engine import policy
from metalhorn.storage.engine.policy import Mode

RW, WO, ERR = Mode.RW, Mode.WO, Mode.ERR
IO = errors.StorageIOError("disk error")
FULL = errors.NoSpace("no space left")
GONE = errors.Unavailable("timed out")
BAD = errors.InvalidArgument("bad request")


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    modes: dict[str, Mode]
    failures: dict[str, errors.MetalhornError]
    after: dict[str, Mode]
    error: type[errors.MetalhornError] | None
    went_err: tuple[str, ...] = ()


ROWS = [
    Row("all-ok", {"a": RW, "b": RW, "c": RW}, {}, {"a": RW, "b": RW, "c": RW}, None),
    Row(
        "one-fails-goes-err-io-continues",
        {"a": RW, "b": RW, "c": RW},
        {"b": IO},
        {"a": RW, "b": ERR, "c": RW},
        None,
        ("b",),
    ),
    Row(
        "two-fail-last-rw-carries-on",
        {"a": RW, "b": RW, "c": RW},
        {"a": GONE, "c": IO},
        {"a": ERR, "b": RW, "c": ERR},
        None,
        ("a", "c"),
    ),
    Row(
        "all-fail-operation-fails-all-err",
        {"a": RW, "b": RW},
        {"a": IO, "b": IO},
        {"a": ERR, "b": ERR},
        errors.StorageIOError,
        ("a", "b"),
    ),
    Row(
        "all-fail-mixed-codes-is-io",
        {"a": RW, "b": RW},
        {"a": IO, "b": GONE},
        {"a": ERR, "b": ERR},
        errors.StorageIOError,
        ("a", "b"),
    ),
    Row(
        "all-time-out-is-unavailable",
        {"a": RW, "b": RW},
        {"a": GONE, "b": GONE},
        {"a": ERR, "b": ERR},
        errors.Unavailable,
        ("a", "b"),
    ),
    Row(
        "all-nospace-stay-rw",
        {"a": RW, "b": RW, "c": RW},
        {"a": FULL, "b": FULL, "c": FULL},
        {"a": RW, "b": RW, "c": RW},
        errors.NoSpace,
    ),
    Row("all-invalid-stay-rw", {"a": RW, "b": RW}, {"a": BAD, "b": BAD}, {"a": RW, "b": RW}, errors.InvalidArgument),
    Row("some-nospace-others-ok-nospace-goes-err", {"a": RW, "b": RW}, {"a": FULL}, {"a": ERR, "b": RW}, None, ("a",)),
    Row(
        "all-fail-nospace-and-io-mixed-all-err",
        {"a": RW, "b": RW},
        {"a": FULL, "b": IO},
        {"a": ERR, "b": ERR},
        errors.StorageIOError,
        ("a", "b"),
    ),
    Row("single-rw-nospace-stays-rw", {"a": RW, "b": ERR}, {"a": FULL}, {"a": RW, "b": ERR}, errors.NoSpace),
    Row(
        "all-nospace-but-wo-goes-err",
        {"a": RW, "w": WO},
        {"a": FULL, "w": FULL},
        {"a": RW, "w": ERR},
        errors.NoSpace,
        ("w",),
    ),
    Row("wo-fails-goes-err-write-ok", {"a": RW, "w": WO}, {"w": IO}, {"a": RW, "w": ERR}, None, ("w",)),
    Row("wo-ok-but-all-rw-failed", {"a": RW, "w": WO}, {"a": IO}, {"a": ERR, "w": WO}, errors.StorageIOError, ("a",)),
    Row("errors-from-err-replicas-ignored", {"a": RW, "b": ERR}, {"b": IO}, {"a": RW, "b": ERR}, None),
    Row("unknown-replica-ignored", {"a": RW}, {"zz": IO}, {"a": RW}, None),
    Row("no-rw-at-all-is-unavailable", {"a": ERR, "w": WO}, {}, {"a": ERR, "w": WO}, errors.Unavailable),
    Row("no-rw-and-wo-fails", {"a": ERR, "w": WO}, {"w": IO}, {"a": ERR, "w": ERR}, errors.Unavailable, ("w",)),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_after_operation(row: Row) -> None:
    outcome = policy.after_operation(row.modes, row.failures)
    assert dict(outcome.modes) == row.after
    assert tuple(change.replica for change in outcome.changes) == row.went_err
    for change in outcome.changes:
        assert change.old is row.modes[change.replica]
        assert change.new is ERR
        assert row.failures[change.replica].message in change.reason
        assert row.failures[change.replica].code.name in change.reason
    if row.error is None:
        assert outcome.ok and outcome.error is None
    else:
        assert not outcome.ok
        assert type(outcome.error) is row.error
    assert row.modes == {**row.modes}  # the input is not mutated


def test_all_failed_message_names_every_replica() -> None:
    outcome = policy.after_operation({"a": RW, "b": RW}, {"a": IO, "b": GONE})
    assert outcome.error is not None
    assert "a: IO: disk error" in outcome.error.message
    assert "b: UNAVAILABLE: timed out" in outcome.error.message


def test_sequence_of_operations() -> None:
    """Each step runs on the modes the previous one left, like a volume living through failures."""
    steps = [
        ({"b": IO}, {"a": RW, "b": ERR, "c": RW}, None),
        ({"a": FULL, "c": FULL}, {"a": RW, "b": ERR, "c": RW}, errors.NoSpace),  # full disk: still RW
        ({}, {"a": RW, "b": ERR, "c": RW}, None),  # space freed: works again
        ({"b": IO, "c": GONE}, {"a": RW, "b": ERR, "c": ERR}, None),  # b's error no longer counts
        ({"a": IO}, {"a": ERR, "b": ERR, "c": ERR}, errors.StorageIOError),
        ({}, {"a": ERR, "b": ERR, "c": ERR}, errors.Unavailable),
    ]
    modes: dict[str, Mode] = {"a": RW, "b": RW, "c": RW}
    for failures, after, error in steps:
        outcome = policy.after_operation(modes, failures)
        assert dict(outcome.modes) == after
        assert (None if outcome.error is None else type(outcome.error)) is error
        modes = dict(outcome.modes)


LEGAL = {(RW, ERR), (WO, ERR), (WO, RW), (ERR, WO)}


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(Mode, Mode)), ids=lambda m: m.value if isinstance(m, Mode) else ""
)
def test_transition_table(old: Mode, new: Mode) -> None:
    if (old, new) in LEGAL:
        policy.check_transition(old, new)
    else:
        with pytest.raises(errors.InvalidArgument):
            policy.check_transition(old, new)


def state(revision: int, chain: tuple[str, ...] = ("snap-a",), *, size: int = 100, rebuilding: bool = False) -> object:
    return policy.ReplicaState(size=size, revision=revision, chain=chain, rebuilding=rebuilding)


START_ROWS = [
    ("all-agree", {"a": state(5), "b": state(5), "c": state(5)}, {"a": RW, "b": RW, "c": RW}, None),
    ("stale-goes-err", {"a": state(5), "b": state(3), "c": state(5)}, {"a": RW, "b": ERR, "c": RW}, None),
    ("newest-wins-even-alone", {"a": state(2), "b": state(9), "c": state(2)}, {"a": ERR, "b": RW, "c": ERR}, None),
    ("unreachable-goes-err", {"a": GONE, "b": state(1)}, {"a": ERR, "b": RW}, None),
    ("rebuilding-goes-err", {"a": state(9, rebuilding=True), "b": state(1)}, {"a": ERR, "b": RW}, None),
    (
        "chain-majority-wins",
        {"a": state(5, ("x",)), "b": state(5, ("y",)), "c": state(5, ("y",))},
        {"a": ERR, "b": RW, "c": RW},
        None,
    ),
    ("chain-tie-first-wins", {"a": state(5, ("x",)), "b": state(5, ("y",))}, {"a": RW, "b": ERR}, None),
    ("none-reachable", {"a": GONE, "b": GONE}, {"a": ERR, "b": ERR}, errors.Unavailable),
    ("wrong-size-refuses", {"a": state(5), "b": state(5, size=200)}, None, errors.InvalidArgument),
]


@pytest.mark.parametrize(("states", "after", "error"), [r[1:] for r in START_ROWS], ids=[r[0] for r in START_ROWS])
def test_at_start(states: dict[str, object], after: dict[str, Mode] | None, error: type[Exception] | None) -> None:
    plan = policy.at_start(states, size=100)  # type: ignore[arg-type]
    if error is not None:
        assert type(plan.error) is error
        return
    assert plan.error is None
    assert dict(plan.modes) == after
    for name, mode in plan.modes.items():
        assert (plan.reasons[name] == "") == (mode is RW)


def test_at_start_reasons() -> None:
    plan = policy.at_start({"a": state(7), "b": state(3), "c": GONE}, size=100)
    assert plan.reasons == {"a": "", "b": "stale: revision 3 < 7", "c": "unreachable: UNAVAILABLE: timed out"}
    refused = policy.at_start({"a": GONE}, size=100)
    assert refused.error is not None and "a: unreachable" in refused.error.message
