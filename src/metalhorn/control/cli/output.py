"""Rendering records for people (tables, detail views, progress bars) and for scripts (json, yaml).

Every function here is pure: records in, text out, so the golden tests pin the exact output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from metalhorn.common import units

FORMATS = ("table", "json", "yaml")


def structured(data: Any, fmt: str) -> str:
    """JSON (sorted keys, two-space indent) or YAML of records, for scripts."""
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=True)
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False).rstrip("\n")


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; empty cells show as "-"; no trailing spaces."""
    cells = [list(header)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None or value in ("", []):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def progress_bar(done: int, total: int, *, width: int = 30, unit: str = "") -> str:
    """`[#########---------------------]  30%  300MiB/1GiB`; a total of 0 shows as complete. With a `unit`
    the counts are shown as they are (`1/3 replicas`), else as byte sizes."""
    fraction = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = int(fraction * width)
    counts = f"{done}/{total} {unit}" if unit else f"{_size(done)}/{_size(total)}"
    return f"[{'#' * filled}{'-' * (width - filled)}] {int(fraction * 100):3d}%  {counts}"


def expansion_line(expansion: Mapping[str, Any]) -> str:
    """`to 2GiB [##########--------------------]  33%  1/3 replicas` (replicas restarted with the new size)."""
    bar = progress_bar(int(expansion.get("done") or 0), int(expansion.get("total") or 0), unit="replicas")
    return f"to {_size(expansion.get('size'))} {bar}"


def _size(value: object) -> str:
    """Exact when round (1GiB), else one decimal (252.0GiB): tables are read, not parsed."""
    if value is None:
        return ""
    if not isinstance(value, int) or value <= 0:
        return str(value)
    exact = units.format_size(value)
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return exact if exact.endswith(suffix) else f"{value / factor:.1f}{suffix}"
    return exact


def _get(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


# -- volumes ----------------------------------------------------------------------------------------------------


def volume_table(volumes: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for volume in sorted(volumes, key=lambda v: str(v.get("name"))):
        status = volume.get("status") or {}
        replicas = status.get("replicas") or []
        healthy = sum(1 for r in replicas if r.get("mode") == "RW")
        wanted = _get(volume, "spec", "replicas")
        rows.append(
            [
                volume.get("name"),
                _size(_get(volume, "spec", "size")),
                f"{healthy}/{wanted}" if wanted is not None else "",
                status.get("state"),
                status.get("robustness"),
                _get(volume, "spec", "attach_node"),
                status.get("endpoint"),
            ]
        )
    return table(("NAME", "SIZE", "REPLICAS", "STATE", "ROBUSTNESS", "NODE", "ENDPOINT"), rows)


def volume_detail(volume: Mapping[str, Any]) -> str:
    spec = volume.get("spec") or {}
    status = volume.get("status") or {}
    fields = [
        ("name", volume.get("name")),
        ("size", _size(spec.get("size"))),
        ("replicas", spec.get("replicas")),
        ("state", status.get("state")),
        ("robustness", status.get("robustness")),
        ("node", spec.get("attach_node")),
        ("endpoint", status.get("endpoint")),
        ("block device", status.get("block_device")),
        ("reasons", "; ".join(status.get("reasons") or [])),
    ]
    width = max(len(key) for key, _ in fields) + 1
    lines = [f"{(key + ':').ljust(width)}  {_cell(value)}" for key, value in fields]
    rebuild = status.get("rebuild")
    if isinstance(rebuild, Mapping):
        bar = progress_bar(int(rebuild.get("done") or 0), int(rebuild.get("total") or 0))
        lines.append(f"{'rebuild:'.ljust(width)}  {rebuild.get('replica')} {bar}")
    grow = status.get("expansion")
    if isinstance(grow, Mapping):
        lines.append(f"{'expansion:'.ljust(width)}  {expansion_line(grow)}")
    replicas = status.get("replicas") or []
    lines.append("")
    lines.append(
        table(
            ("REPLICA", "NODE", "MODE", "ADDRESS"),
            [[r.get("name"), r.get("node"), r.get("mode"), r.get("address")] for r in replicas],
        )
    )
    scheduling = status.get("scheduling") or []
    if scheduling:
        lines.append("")
        lines.append("not scheduled on:")
        lines.append(
            table(("NODE", "DISK", "REASON"), [[s.get("node"), s.get("disk"), s.get("reason")] for s in scheduling])
        )
    return "\n".join(lines)


# -- nodes ------------------------------------------------------------------------------------------------------


def node_table(nodes: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for node in sorted(nodes, key=lambda n: str(n.get("name"))):
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        disks = status.get("disks") or {}
        capacity = sum(int(d.get("capacity") or 0) for d in disks.values() if isinstance(d, Mapping))
        available = sum(int(d.get("available") or 0) for d in disks.values() if isinstance(d, Mapping))
        rows.append(
            [
                node.get("name"),
                "yes" if status.get("ready") else "no",
                status.get("address"),
                spec.get("zone"),
                list(spec.get("tags") or []),
                len(set(disks) | set(spec.get("disks") or {})),
                _size(capacity) if capacity else "",
                _size(available) if available else "",
                "yes" if spec.get("schedulable", True) else "no",
                "; ".join(status.get("reasons") or []),
            ]
        )
    return table(
        ("NAME", "READY", "ADDRESS", "ZONE", "TAGS", "DISKS", "CAPACITY", "AVAILABLE", "SCHEDULABLE", "REASONS"),
        rows,
    )


def disk_table(nodes: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for node, path, spec, status in _disks(nodes):
        rows.append(
            [
                node.get("name"),
                path,
                list(spec.get("tags") or []),
                _size(status.get("capacity")),
                _size(status.get("available")),
                _size(status.get("scheduled")) if status.get("scheduled") else "0",
                "yes" if spec.get("schedulable", True) else "no",
            ]
        )
    return table(("NODE", "PATH", "TAGS", "CAPACITY", "AVAILABLE", "SCHEDULED", "SCHEDULABLE"), rows)


def _disks(nodes: Sequence[Mapping[str, Any]]) -> Iterable[tuple[Mapping[str, Any], str, Mapping[str, Any], Any]]:
    for node in sorted(nodes, key=lambda n: str(n.get("name"))):
        spec_disks = _get(node, "spec", "disks") or {}
        status_disks = _get(node, "status", "disks") or {}
        for path in sorted(set(spec_disks) | set(status_disks)):
            yield node, path, spec_disks.get(path) or {}, status_disks.get(path) or {}
