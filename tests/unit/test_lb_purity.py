"""lb's pure cores import no I/O modules, and lb never imports storage/ or control/ (STYLE.md layering)."""

from __future__ import annotations

import ast
import pathlib

import pytest

import metalhorn.lb

LB = pathlib.Path(metalhorn.lb.__file__).parent
PURE = ["fields.py", "config.py", "model.py", "allocator.py"]
IO_MODULES = {"asyncio", "socket", "os", "subprocess", "selectors", "threading"}


def imported(path: pathlib.Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_no_io(name: str) -> None:
    names = imported(LB / name)
    assert not {n.split(".")[0] for n in names} & IO_MODULES


@pytest.mark.parametrize("path", sorted(LB.rglob("*.py")), ids=lambda p: str(p.relative_to(LB)))
def test_lb_never_imports_storage_or_control(path: pathlib.Path) -> None:
    bad = [n for n in imported(path) if n.startswith(("metalhorn.storage", "metalhorn.control"))]
    assert not bad
