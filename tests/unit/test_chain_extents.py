"""The extent map against a dict model: which layer each 4 KiB block resolves to."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from metalhorn.common import errors
from metalhorn.storage.chain import extents
from metalhorn.storage.chain.extents import HEAD, ZERO, ExtentMap


def expand(runs: list[extents.Run]) -> list[int]:
    out: list[int] = []
    for _first, count, source in runs:
        out.extend([source] * count)
    return out


def check_runs(runs: list[extents.Run], first: int, count: int) -> None:
    """Runs are contiguous, cover the range, and are coalesced (neighbours differ)."""
    pos = first
    for i, (run_first, run_count, source) in enumerate(runs):
        assert run_first == pos and run_count > 0
        if i:
            assert runs[i - 1][2] != source
        pos += run_count
    assert pos == first + count


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 0, (0, 0)),
        (0, 1, (0, 1)),
        (0, 4096, (0, 1)),
        (1, 4096, (0, 2)),
        (4095, 2, (0, 2)),
        (8192, 4096, (2, 1)),
        (4096 * 3 + 10, 1 << 20, (3, 257)),
    ],
)
def test_block_span(offset: int, length: int, expected: tuple[int, int]) -> None:
    assert extents.block_span(offset, length) == expected


def test_build_resolves_newest_layer_first() -> None:
    emap = ExtentMap.build(
        8,
        snapshots=[[(0, 4 * 4096)], [(2 * 4096, 4096), (6 * 4096, 100)]],
        head=[(3 * 4096, 2 * 4096)],
    )
    assert emap.layers == 2
    assert expand(emap.runs(0, 8)) == [1, 1, 2, HEAD, HEAD, ZERO, 2, ZERO]
    assert emap.runs(0, 8) == [(0, 2, 1), (2, 1, 2), (3, 2, HEAD), (5, 1, ZERO), (6, 1, 2), (7, 1, ZERO)]
    assert emap.below_runs(0, 8) == [(0, 4, True), (4, 2, False), (6, 1, True), (7, 1, False)]


def test_build_clips_extents_past_the_end() -> None:
    emap = ExtentMap.build(2, snapshots=[[(4096, 1 << 20)]], head=[(1 << 30, 4096)])
    assert expand(emap.runs(0, 2)) == [ZERO, 1]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([("mark", 0, 2)], [HEAD, HEAD, ZERO, ZERO], id="write"),
        pytest.param([("mark", 0, 2), ("snap",)], [1, 1, ZERO, ZERO], id="snapshot-folds-head"),
        pytest.param([("mark", 0, 2), ("snap",), ("mark", 1, 2), ("clear", 0, 4)], [1, 1, ZERO, ZERO], id="clear"),
        pytest.param(
            [("mark", 0, 4), ("snap",), ("mark", 2, 1), ("snap",), ("mark", 3, 1)], [1, 1, 2, HEAD], id="three-layers"
        ),
        pytest.param([("grow", 6), ("mark", 5, 1)], [ZERO, ZERO, ZERO, ZERO, ZERO, HEAD], id="grow"),
    ],
)
def test_steps(steps: list[tuple[object, ...]], expected: list[int]) -> None:
    emap = ExtentMap(4)
    for step in steps:
        match step:
            case ("mark", int(first), int(count)):
                emap.mark_head(first, count)
            case ("clear", int(first), int(count)):
                emap.clear_head(first, count)
            case ("snap",):
                emap.snapshot()
            case ("grow", int(n)):
                emap.grow(n)
    assert expand(emap.runs(0, emap.nblocks)) == expected


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.runs(3, 2),
        lambda m: m.mark_head(-1, 1),
        lambda m: m.clear_head(0, 5),
        lambda m: m.source(4),
        lambda m: m.held_below_head(4),
        lambda m: m.grow(3),
    ],
    ids=["runs", "mark", "clear", "source", "held", "shrink"],
)
def test_out_of_range_is_refused(call: object) -> None:
    emap = ExtentMap(4)
    with pytest.raises(errors.InvalidArgument):
        call(emap)  # type: ignore[operator]


def test_chain_length_is_capped() -> None:
    emap = ExtentMap(1)
    for _ in range(extents.MAX_LAYERS):
        emap.snapshot()
    with pytest.raises(errors.NotSupported):
        emap.snapshot()


def test_large_range_is_few_runs() -> None:
    emap = ExtentMap(1 << 18)  # 1 GiB
    emap.mark_head(0, 1 << 17)
    emap.snapshot()
    emap.mark_head(100, 10)
    assert emap.runs(0, 1 << 18) == [(0, 100, 1), (100, 10, HEAD), (110, (1 << 17) - 110, 1), (1 << 17, 1 << 17, 0)]


NBLOCKS = 24
blocks = st.integers(0, NBLOCKS - 1)


class ExtentModel(RuleBasedStateMachine):
    """Model: a dict block -> layer for snapshots, a set for the head."""

    def __init__(self) -> None:
        super().__init__()
        self.emap = ExtentMap(NBLOCKS)
        self.snap: dict[int, int] = {}
        self.head: set[int] = set()
        self.layers = 0

    @rule(first=blocks, count=st.integers(1, 8))
    def mark(self, first: int, count: int) -> None:
        count = min(count, NBLOCKS - first)
        self.emap.mark_head(first, count)
        self.head.update(range(first, first + count))

    @rule(first=blocks, count=st.integers(1, 8))
    def clear(self, first: int, count: int) -> None:
        count = min(count, NBLOCKS - first)
        self.emap.clear_head(first, count)
        self.head.difference_update(range(first, first + count))

    @precondition(lambda self: self.layers < 20)
    @rule()
    def snapshot(self) -> None:
        self.layers += 1
        assert self.emap.snapshot() == self.layers
        for block in self.head:
            self.snap[block] = self.layers
        self.head.clear()

    def expected(self, block: int) -> int:
        if block in self.head:
            return HEAD
        return self.snap.get(block, ZERO)

    @rule(first=blocks, count=st.integers(0, NBLOCKS))
    def runs_match(self, first: int, count: int) -> None:
        count = min(count, NBLOCKS - first)
        runs = self.emap.runs(first, count)
        check_runs(runs, first, count)
        assert expand(runs) == [self.expected(b) for b in range(first, first + count)]
        below = self.emap.below_runs(first, count)
        check_runs([(f, c, int(h)) for f, c, h in below], first, count)
        flat = [h for _f, c, h in below for _ in range(c)]
        assert flat == [b in self.snap for b in range(first, first + count)]

    @invariant()
    def per_block(self) -> None:
        for block in range(NBLOCKS):
            assert self.emap.source(block) == self.expected(block)
            assert self.emap.held_below_head(block) == (block in self.snap)
        assert self.emap.head_blocks() == len(self.head)


TestExtentModel = ExtentModel.TestCase
TestExtentModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
