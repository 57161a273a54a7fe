"""Pure agent translations: records -> process specs, engine replica set -> add/rm operations."""

from __future__ import annotations

import pathlib

import pytest

from metalhorn.common import errors
from metalhorn.control.agent import specs

A, B, C, D = (f"tcp://127.0.0.1:{port}" for port in (7001, 7002, 7003, 7004))
DATA = pathlib.Path("/srv/node-1")


def r(address: str, mode: str) -> dict[str, str]:
    return {"address": address, "mode": mode}


@pytest.mark.parametrize(
    ("current", "desired", "busy", "add", "remove"),
    [
        ([r(A, "RW"), r(B, "RW")], [A, B], [], (), ()),
        ([r(A, "RW"), r(B, "RW")], [A, B, C], [], (C,), ()),
        ([r(A, "RW"), r(B, "RW")], [A, B, C], [C], (), ()),  # already being rebuilt
        ([r(A, "RW"), r(B, "ERR"), r(C, "RW")], [A, B, C], [], (), ()),  # the engine rebuilds ERR by itself
        ([r(A, "RW"), r(B, "ERR"), r(C, "RW")], [A, C, D], [], (D,), (B,)),
        ([r(A, "RW"), r(B, "WO")], [A, B], [], (), ()),
        ([r(A, "RW"), r(B, "RW")], [C], [], (C,), ()),  # never drop the last RW copies for an empty new one
        ([r(A, "RW"), r(B, "RW")], [], [], (), ()),
        ([r("127.0.0.1:7001", "RW")], [A, B], [], (B,), ()),  # addresses compare normalized
    ],
    ids=["same", "add", "add-busy", "err-left-to-engine", "replace-err", "rebuilding", "keep-last-rw", "empty", "norm"],
)
def test_replica_changes(
    current: list[dict[str, str]], desired: list[str], busy: list[str], add: tuple[str, ...], remove: tuple[str, ...]
) -> None:
    assert specs.replica_changes(current, desired, rebuilding=busy) == specs.ReplicaChanges(add=add, remove=remove)


def test_rebuild_progress_from_engine_info() -> None:
    info = {
        "rebuilds": [
            {"address": A, "state": "done", "done": 10, "total": 10},
            {"address": B, "state": "copying", "done": 3, "total": 10},
        ]
    }
    assert specs.rebuild_progress(info) == {"replica": B, "done": 3, "total": 10}
    assert specs.rebuilding(info) == [B]
    assert specs.rebuild_progress({}) is None


def replica(**spec: object) -> dict[str, object]:
    return {"name": "v1-r-a", "spec": {"volume": "v1", "size": 1 << 30, "desired": "running", **spec}}


def test_replica_spec_command_and_dir() -> None:
    built = specs.replica_spec(replica(), data_path=DATA, disks=[], host="127.0.0.1", port=7001, command=["mh"])
    assert built.args == (
        "mh",
        "replica",
        "serve",
        "/srv/node-1/replicas/v1-r-a",
        "--size",
        str(1 << 30),
        "--listen",
        "127.0.0.1:7001",
    )
    assert built.log_path == DATA / "logs" / "v1-r-a.log" and built.run


@pytest.mark.parametrize(
    ("spec", "disks", "expected"),
    [
        ({}, [], "/srv/node-1/replicas/v1-r-a"),
        ({"disk": "/mnt/fast"}, ["/mnt/fast"], "/mnt/fast/replicas/v1-r-a"),
        ({"data_dir": "/mnt/fast/replicas/v1-r-a"}, ["/mnt/fast"], "/mnt/fast/replicas/v1-r-a"),
    ],
)
def test_replica_dir(spec: dict[str, object], disks: list[str], expected: str) -> None:
    assert str(specs.replica_dir(replica(**spec), data_path=DATA, disks=disks)) == expected


@pytest.mark.parametrize(
    "record",
    [
        replica(data_dir="/etc"),
        replica(data_dir="/srv/node-1/../etc/x"),
        replica(disk="/mnt/other"),
        {"name": "../x", "spec": {"size": 1}},
        {"name": "a b", "spec": {"size": 1}},
    ],
    ids=["outside", "dotdot-dir", "unknown-disk", "dotdot-name", "space-name"],
)
def test_unsafe_records_are_refused(record: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidArgument):
        specs.replica_dir(record, data_path=DATA, disks=["/mnt/fast"])


def test_engine_spec() -> None:
    record = {
        "name": "v1-e",
        "spec": {"volume": "v1", "size": 1 << 30, "desired": "running", "replica_addresses": [A, "127.0.0.1:7002"]},
    }
    built = specs.engine_spec(record, data_path=DATA, host="127.0.0.1", port=7100, command=["mh"])
    assert built.args == (
        "mh",
        "engine",
        "serve",
        "v1",
        "--size",
        str(1 << 30),
        "--replica",
        A,
        "--replica",
        B,
        "--frontend",
        "nbd",
        "--listen",
        "127.0.0.1:7100",
        "--control",
        "unix:/srv/node-1/run/v1-e.sock",
    )
    assert specs.endpoint(built, "v1") == "nbd://127.0.0.1:7100/v1"
    assert built.run and len(built.wait_for) == 2
    record["spec"]["replica_addresses"] = []  # type: ignore[index]
    assert not specs.engine_spec(record, data_path=DATA, host="127.0.0.1", port=7100, command=["mh"]).run


def test_long_control_paths_fall_back_to_a_short_one() -> None:
    path = specs.control_path(pathlib.Path("/" + "x" * 120), "v1-e")
    assert len(path) < 100 and path.endswith(".sock")
