"""Layering rules from STYLE.md, checked on the source: daemons > control > (storage | lb) > common."""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "metalhorn"
IO_MODULES = {"asyncio", "socket", "os", "subprocess", "select", "selectors", "threading", "uvloop"}
# Packages and modules that must stay pure: functions of bytes and values, no I/O.
PURE = (
    "common/errors.py",
    "common/units.py",
    "common/addresses.py",
    "common/metrics.py",
    "storage/scheduler.py",
    "storage/chain",
    "storage/wire/codec.py",
    "storage/nbd",
    "storage/engine/policy.py",
    "lb/model.py",
    "lb/config.py",
    "lb/allocator.py",
    "lb/election.py",
    "lb/layer2/frames.py",
    "lb/bgp/routes.py",
    "lb/bgp/messages",
    "lb/bgp/fsm.py",
)
FORBIDDEN = {
    "common": ("metalhorn.storage", "metalhorn.lb", "metalhorn.control", "metalhorn.daemons"),
    "storage": ("metalhorn.lb", "metalhorn.control", "metalhorn.daemons"),
    "lb": ("metalhorn.storage", "metalhorn.control", "metalhorn.daemons"),
    "control": ("metalhorn.daemons",),
}


def imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources() -> list[pathlib.Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_layer_imports(path: pathlib.Path) -> None:
    rel = path.relative_to(SRC)
    names = imports(path)
    top = rel.parts[0] if len(rel.parts) > 1 else ""
    for prefix in FORBIDDEN.get(top, ()):
        bad = sorted(n for n in names if n == prefix or n.startswith(prefix + "."))
        assert not bad, f"{rel} ({top}/) must not import {bad}"
    if top != "testing":
        assert not any(n.startswith("metalhorn.testing") for n in names), f"{rel} imports the test kit"
    if any(str(rel) == p or str(rel).startswith(p + "/") for p in PURE):
        io = sorted(n for n in names if n.split(".")[0] in IO_MODULES)
        assert not io, f"{rel} is a pure module but imports {io}"
