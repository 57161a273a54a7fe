"""Longhorn-compatible metadata: round trips, Longhorn's own bytes, and garbage refused with the file named."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalhorn.common import errors
from metalhorn.storage.chain import meta

# As longhorn-engine writes it (Go json.Encoder: compact, trailing newline).
LONGHORN_VOLUME_META = (
    b'{"Size":5003804672,"Head":"volume-head-002.img","Dirty":true,"Rebuilding":false,"Error":"",'
    b'"Parent":"volume-snap-a.img","SectorSize":512,"BackingFilePath":""}\n'
)
LONGHORN_DISK_META = (
    b'{"Name":"volume-snap-a.img","Parent":"","Removed":false,"UserCreated":true,'
    b'"Created":"2024-05-01T10:00:00Z","Labels":null}\n'
)


def test_longhorn_volume_meta_round_trips_byte_for_byte() -> None:
    vm = meta.VolumeMeta.from_json(LONGHORN_VOLUME_META)
    assert vm == meta.VolumeMeta(
        size=5003804672, head="volume-head-002.img", dirty=True, parent="volume-snap-a.img", sector_size=512
    )
    assert vm.to_json() == LONGHORN_VOLUME_META


def test_longhorn_disk_meta_round_trips_byte_for_byte() -> None:
    dm = meta.DiskMeta.from_json(LONGHORN_DISK_META, file="x.img.meta")
    assert dm.name == "volume-snap-a.img" and dm.user_created and dm.labels == {}
    assert dm.to_json() == LONGHORN_DISK_META


@given(
    size=st.integers(1, 1 << 50),
    dirty=st.booleans(),
    parent=st.sampled_from(["", "volume-snap-x.img"]),
    index=st.integers(0, 999),
)
def test_volume_meta_round_trip(size: int, dirty: bool, parent: str, index: int) -> None:
    vm = meta.VolumeMeta(size=size, head=meta.head_file(index), dirty=dirty, parent=parent)
    assert meta.VolumeMeta.from_json(vm.to_json()) == vm


@given(labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), user=st.booleans())
def test_disk_meta_round_trip(labels: dict[str, str], user: bool) -> None:
    dm = meta.DiskMeta(name="volume-snap-s.img", parent="p", user_created=user, created="t", labels=labels)
    assert meta.DiskMeta.from_json(dm.to_json(), file="f") == dm


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"", "not valid JSON", id="empty"),
        pytest.param(b"\x00\x00\x00", "not valid JSON", id="nul"),
        pytest.param(b"[1]", "expected a JSON object", id="array"),
        pytest.param(b'{"Head":"volume-head-000.img"}', "'Size' is missing", id="no-size"),
        pytest.param(b'{"Size":"10","Head":"volume-head-000.img"}', "'Size' should be int", id="size-str"),
        pytest.param(b'{"Size":true,"Head":"volume-head-000.img"}', "'Size' should be int", id="size-bool"),
        pytest.param(b'{"Size":0,"Head":"volume-head-000.img"}', "must be positive", id="size-zero"),
        pytest.param(b'{"Size":4096,"Head":"other.img"}', "volume-head-NNN", id="bad-head"),
        pytest.param(b'{"Size":4096,"Head":"volume-head-000.img","Dirty":"yes"}', "'Dirty'", id="dirty-str"),
    ],
)
def test_volume_meta_garbage(data: bytes, problem: str) -> None:
    with pytest.raises(errors.CorruptMetadata, match=problem) as info:
        meta.VolumeMeta.from_json(data, file="/r/volume.meta")
    assert "/r/volume.meta" in info.value.message


@pytest.mark.parametrize(
    "data",
    [b"{", b'{"Parent":""}', b'{"Name":1}', b'{"Name":"a","Labels":[1]}', b'{"Name":"a","Labels":{"k":1}}'],
)
def test_disk_meta_garbage(data: bytes) -> None:
    with pytest.raises(errors.CorruptMetadata, match=r"^d\.img\.meta: "):
        meta.DiskMeta.from_json(data, file="d.img.meta")


def test_volume_meta_ignores_unknown_fields() -> None:
    obj = json.loads(LONGHORN_VOLUME_META)
    obj["SomethingNew"] = 1
    assert meta.VolumeMeta.from_json(json.dumps(obj).encode()).size == 5003804672


@pytest.mark.parametrize("value", [0, 1, 12345, (1 << 63) - 1])
def test_revision_round_trip(value: int) -> None:
    block = meta.encode_revision(value)
    assert len(block) == 4096 and block.startswith(str(value).encode()) and block.endswith(b"\x00")
    assert meta.decode_revision(block) == value


@pytest.mark.parametrize(
    "data", [b"", bytes(4096), b"12a" + bytes(4093), b"-1", b"1\x002", b"9" * 20, b"1" * 4097], ids=repr
)
def test_revision_garbage(data: bytes) -> None:
    with pytest.raises(errors.CorruptMetadata, match=r"revision\.counter"):
        meta.decode_revision(data)


def test_chain_walks_parents_oldest_first() -> None:
    disks = {
        "volume-head-002.img": meta.DiskMeta(name="volume-head-002.img", parent="volume-snap-b.img"),
        "volume-snap-b.img": meta.DiskMeta(name="volume-snap-b.img", parent="volume-snap-a.img"),
        "volume-snap-a.img": meta.DiskMeta(name="volume-snap-a.img"),
        "volume-snap-off.img": meta.DiskMeta(name="volume-snap-off.img"),
    }
    assert meta.chain("volume-head-002.img", disks) == ["volume-snap-a.img", "volume-snap-b.img", "volume-head-002.img"]


@pytest.mark.parametrize(
    ("disks", "problem"),
    [
        ({"volume-head-000.img": meta.DiskMeta(name="h", parent="volume-snap-x.img")}, "volume-snap-x.img.meta"),
        ({}, "volume-head-000.img.meta: missing"),
        (
            {
                "volume-head-000.img": meta.DiskMeta(name="h", parent="volume-snap-x.img"),
                "volume-snap-x.img": meta.DiskMeta(name="x", parent="volume-head-000.img"),
            },
            "loop",
        ),
    ],
)
def test_chain_refuses_broken_links(disks: dict[str, meta.DiskMeta], problem: str) -> None:
    with pytest.raises(errors.CorruptMetadata, match=problem):
        meta.chain("volume-head-000.img", disks)


@pytest.mark.parametrize(
    ("head", "following"),
    [("volume-head-000.img", "volume-head-001.img"), ("volume-head-999.img", "volume-head-1000.img")],
)
def test_next_head(head: str, following: str) -> None:
    assert meta.next_head_file(head) == following


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", "a b", "x" * 64])
def test_snapshot_names_refused(name: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        meta.snapshot_file(name)


def test_snapshot_names() -> None:
    assert meta.snapshot_file("backup-1.a_b") == "volume-snap-backup-1.a_b.img"
    assert meta.snapshot_name("volume-snap-backup-1.img") == "backup-1"
    assert meta.head_index("volume-head-007.img") == 7
