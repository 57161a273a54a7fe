"""The node's disks as the agent reports them: capacity and available bytes from statvfs, plus tags.

The data path is always a disk; `metalhorn disk add NODE PATH` adds more through the manager (node.spec.disks),
and the agent reports each one it can stat. A path it cannot stat is reported with its error, not dropped, so
`node ls` shows why a disk has no space.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any


def usage(path: str) -> dict[str, Any]:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"capacity": 0, "available": 0, "error": f"cannot stat {path}: {exc.strerror or exc}"}
    return {"capacity": st.f_blocks * st.f_frsize, "available": st.f_bavail * st.f_frsize}


def report(data_path: pathlib.Path, spec_disks: Mapping[str, Any], *, create: Iterable[str] = ()) -> dict[str, Any]:
    """{path: {capacity, available, tags}} for the data path and every disk in node.spec.disks."""
    for path in create:
        with contextlib.suppress(OSError):  # reported by usage() below
            pathlib.Path(path, "replicas").mkdir(parents=True, exist_ok=True)
    disks: dict[str, Any] = {str(data_path): {**usage(str(data_path)), "tags": []}}
    for path, spec in spec_disks.items():
        tags = list(spec.get("tags") or []) if isinstance(spec, Mapping) else []
        disks[str(path)] = {**usage(str(path)), "tags": tags}
    return disks
