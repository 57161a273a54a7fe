"""CLI rendering against golden files in tests/unit/data/cli/ (METALHORN_UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from metalhorn.control.cli import common, output

DATA = pathlib.Path(__file__).parent / "data" / "cli"
UPDATE_GOLDEN = os.environ.get("METALHORN_UPDATE_GOLDEN") == "1"
GiB = 1 << 30

VOLUME: dict[str, Any] = {
    "kind": "volume",
    "name": "v1",
    "spec": {"size": GiB, "replicas": 3, "attach_node": "node-1", "frontend": "nbd"},
    "status": {
        "state": "attached",
        "robustness": "degraded",
        "reasons": ["replica v1-r-c on node-3 failed: node down"],
        "endpoint": "nbd://127.0.0.1:40001/v1",
        "block_device": "",
        "replicas": [
            {"name": "v1-r-a", "node": "node-1", "mode": "RW", "address": "tcp://127.0.0.1:40011"},
            {"name": "v1-r-b", "node": "node-2", "mode": "RW", "address": "tcp://127.0.0.1:40012"},
            {"name": "v1-r-d", "node": "node-4", "mode": "WO", "address": "tcp://127.0.0.1:40014"},
        ],
        "scheduling": [{"node": "node-3", "disk": "", "reason": "node is down"}],
        "rebuild": {"replica": "v1-r-d", "done": 300 << 20, "total": GiB},
    },
}
VOLUME_DETACHED: dict[str, Any] = {
    "name": "data-2",
    "spec": {"size": 10 * GiB, "replicas": 2, "attach_node": ""},
    "status": {"state": "detached", "robustness": "healthy", "replicas": [], "endpoint": ""},
}
NODES: list[dict[str, Any]] = [
    {
        "name": "node-2",
        "spec": {"tags": ["ssd"], "zone": "b", "schedulable": True, "disks": {}},
        "status": {
            "ready": True,
            "address": "127.0.0.1",
            "disks": {"/data/node-2": {"capacity": 100 * GiB, "available": 40 * GiB, "scheduled": 3 * GiB}},
            "reasons": [],
        },
    },
    {
        "name": "node-1",
        "spec": {"tags": [], "zone": "", "schedulable": False, "disks": {"/mnt/fast": {"tags": ["nvme"]}}},
        "status": {
            "ready": False,
            "address": "127.0.0.1",
            "disks": {"/data/node-1": {"capacity": 100 * GiB, "available": 50 * GiB}},
            "reasons": ["no sync for 12s"],
        },
    },
]

CASES: dict[str, Callable[[], str]] = {
    "volume_ls.txt": lambda: output.volume_table([VOLUME, VOLUME_DETACHED]),
    "volume_get.txt": lambda: output.volume_detail(VOLUME),
    "volume_get_detached.txt": lambda: output.volume_detail(VOLUME_DETACHED),
    "node_ls.txt": lambda: output.node_table(NODES),
    "disk_ls.txt": lambda: output.disk_table(NODES),
    "volume_ls_empty.txt": lambda: output.volume_table([]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    text = CASES[name]() + "\n"
    path = DATA / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; METALHORN_UPDATE_GOLDEN=1 rewrites it if intended"


def test_tables_have_no_trailing_spaces() -> None:
    for render in CASES.values():
        assert all(line == line.rstrip() for line in render().splitlines())


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [
        (0, GiB, "[------------------------------]   0%  0/1GiB"),
        (GiB // 2, GiB, "[###############---------------]  50%  512MiB/1GiB"),
        (GiB, GiB, "[##############################] 100%  1GiB/1GiB"),
        (2 * GiB, GiB, "[##############################] 100%  2GiB/1GiB"),
        (0, 0, "[##############################] 100%  0/0"),
    ],
)
def test_progress_bar(done: int, total: int, expected: str) -> None:
    assert output.progress_bar(done, total) == expected


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_structured_output_round_trips(fmt: str) -> None:
    args = argparse.Namespace(output=fmt)
    out = io.StringIO()
    common.emit(args, [VOLUME], output.volume_table, out=out)
    parsed = json.loads(out.getvalue()) if fmt == "json" else yaml.safe_load(out.getvalue())
    assert parsed == [VOLUME]
