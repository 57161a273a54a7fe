"""Pure parts of volume history: the .img.checksum format, block planning, majority, judging verify reports,
the purge plan and the snapshot tree (rendered by the CLI)."""

from __future__ import annotations

import hashlib
import json

import pytest

from metalhorn.common import errors
from metalhorn.daemons import snapshot as snapshot_cli
from metalhorn.storage.chain import checksum, meta
from metalhorn.storage.engine import snapshots as engine_snapshots
from metalhorn.storage.replica import snapshots as replica_snapshots

BS = checksum.BLOCK_SIZE


def test_hash_info_round_trip_has_longhorn_fields() -> None:
    info = checksum.HashInfo.of_blocks(["ab" * 32, "cd" * 32], change_time="t1", last_hashed_at="t2")
    obj = json.loads(info.to_json())
    assert {"method", "checksum", "change_time", "last_hashed_at", "silently_corrupted"} <= set(obj)
    assert obj["method"] == "sha256-2MiB" and obj["block_size"] == BS
    assert checksum.HashInfo.from_json(info.to_json(), file="x") == info
    assert info.checksum == hashlib.sha256(bytes.fromhex("ab" * 32 + "cd" * 32)).hexdigest()


def test_longhorn_record_is_read_but_not_comparable() -> None:
    data = b'{"method":"crc64","checksum":"123","change_time":"x","last_hashed_at":"y","silently_corrupted":false}'
    info = checksum.HashInfo.from_json(data, file="volume-snap-a.img.checksum")
    assert info.method == "crc64" and not info.comparable


@pytest.mark.parametrize(
    "data",
    [b"nope", b"[]", b'{"method":1,"checksum":"x"}', b'{"method":"m","checksum":"x","blocks":[1]}'],
    ids=["not-json", "not-object", "method-type", "blocks-type"],
)
def test_damaged_record_is_corrupt_metadata(data: bytes) -> None:
    with pytest.raises(errors.CorruptMetadata):
        checksum.HashInfo.from_json(data, file="f")


@pytest.mark.parametrize(
    ("extents", "size", "expected"),
    [
        ([], 3 * BS, [False, False, False]),
        ([(0, 4096)], 3 * BS, [True, False, False]),
        ([(BS - 4096, 8192)], 3 * BS, [True, True, False]),
        ([(2 * BS, BS)], 2 * BS + 100, [False, False, True]),
        ([(5 * BS, BS)], 2 * BS, [False, False]),
    ],
    ids=["holes", "first", "straddle", "partial-last", "beyond"],
)
def test_blocks_with_data(extents: list[tuple[int, int]], size: int, expected: list[bool]) -> None:
    assert checksum.blocks_with_data(extents, size) == expected


def test_mismatched_blocks() -> None:
    a = checksum.HashInfo.of_blocks(["00" * 32, "11" * 32], change_time="")
    b = checksum.HashInfo.of_blocks(["00" * 32, "22" * 32, "33" * 32], change_time="")
    assert checksum.mismatched_blocks(a, a) == []
    assert checksum.mismatched_blocks(a, b) == [1, 2]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": "x", "b": "x", "c": "y"}, ("x", ["c"])),
        ({"a": "x", "b": "y"}, ("", ["a", "b"])),
        ({"a": "x", "b": "y", "c": "z"}, ("", ["a", "b", "c"])),
        ({"a": "x"}, ("x", [])),
        ({}, ("", [])),
    ],
    ids=["two-one", "tie", "all-differ", "single", "empty"],
)
def test_majority(values: dict[str, str], expected: tuple[str, list[str]]) -> None:
    assert checksum.majority(values) == expected


def test_judge_local_mismatch_and_minority() -> None:
    good = {"files": {"s.img": {"checksum": "x", "ok": True}}}
    reports = {
        "r1": good,
        "r2": {"files": {"s.img": {"checksum": "y", "ok": False, "bad_blocks": [3]}}},
        "r3": good,
    }
    assert list(engine_snapshots.judge(reports)) == ["r2"]
    assert "blocks [3]" in engine_snapshots.judge(reports)["r2"]
    unrecorded = {"r1": good, "r2": {"files": {"s.img": {"checksum": "y", "ok": True}}}, "r3": good}
    assert engine_snapshots.judge(unrecorded) == {"r2": "s.img differs from the other replicas"}
    assert engine_snapshots.judge({"r1": good, "r2": unrecorded["r2"]}) == {}


def disk(name: str, parent: str, created: str, *, removed: bool = False) -> meta.DiskMeta:
    return meta.DiskMeta(name=name, parent=parent, created=created, removed=removed, user_created=True)


def test_purge_plan_newest_removed_first_skips_branch_points() -> None:
    disks = {
        "volume-snap-a.img": disk("volume-snap-a.img", "", "1", removed=True),
        "volume-snap-b.img": disk("volume-snap-b.img", "volume-snap-a.img", "2", removed=True),
        "volume-head-002.img": disk("volume-head-002.img", "volume-snap-b.img", "3"),
    }
    assert replica_snapshots.purge_plan(disks, head="volume-head-002.img") == (
        "volume-snap-b.img",
        "volume-head-002.img",
    )
    branched = {**disks, "volume-snap-c.img": disk("volume-snap-c.img", "volume-snap-b.img", "4")}
    assert replica_snapshots.purge_plan(branched, head="volume-head-002.img") == (
        "volume-snap-a.img",
        "volume-snap-b.img",
    )
    leaf = {**disks, "volume-snap-c.img": disk("volume-snap-c.img", "volume-snap-b.img", "4", removed=True)}
    assert replica_snapshots.purge_plan(leaf, head="volume-head-002.img") == ("volume-snap-c.img", "")
    assert replica_snapshots.purge_plan({"volume-head-000.img": disk("volume-head-000.img", "", "")}, head="x") is None


def test_tree_and_rendering() -> None:
    disks = {
        "volume-snap-a.img": disk("volume-snap-a.img", "", "1"),
        "volume-snap-b.img": disk("volume-snap-b.img", "volume-snap-a.img", "2"),
        "volume-head-003.img": disk("volume-head-003.img", "volume-snap-a.img", "3"),
    }
    entries = replica_snapshots.tree(
        disks, head="volume-head-003.img", chain=["volume-snap-a.img", "volume-head-003.img"]
    )
    by_name = {e["name"]: e for e in entries}
    assert by_name["a"]["children"] == ["b", "volume-head-003.img"]
    assert by_name["b"]["in_chain"] is False and by_name["b"]["parent"] == "a"
    text = snapshot_cli.render_tree([{**e, "size": 4096} for e in entries])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["NAME", "SIZE"]
    assert lines[1].startswith("a ")
    assert any("└─ volume-head-003.img (head)" in line for line in lines)
