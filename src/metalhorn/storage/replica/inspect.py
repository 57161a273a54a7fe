"""`metalhorn replica inspect`: what a replica directory holds, for humans and for scripts.

Opens the replica read-only (no lock, nothing written), so it also works on a Longhorn replica directory and on a
replica that a server currently holds (then the numbers are a snapshot in time).
"""

from __future__ import annotations

import json
import os
from typing import Any

from metalhorn.common import units
from metalhorn.storage.chain import meta
from metalhorn.storage.replica.store import ReplicaStore


def describe(directory: str, *, checksum: bool = False) -> dict[str, Any]:
    """Everything inspect prints, as one JSON-able dict (the `-o json` output)."""
    store = ReplicaStore.open(directory, readonly=True)
    try:
        report = store.info()
        with open(os.path.join(store.directory, meta.VOLUME_META), "rb") as f:
            report["volume_meta"] = json.loads(f.read())
        if checksum:
            report["checksum"] = store.checksum()  # SHA-256 hex
        return report
    finally:
        store.close()


def render_text(report: dict[str, Any]) -> str:
    size = int(report["size"])
    lines = [
        f"replica    {report['dir']}",
        f"size       {units.format_size(size)} ({size} bytes)",
        f"head       {report['head']}",
        f"parent     {report['parent'] or '-'}",
        f"dirty      {str(report['dirty']).lower()}",
        f"rebuilding {str(report['rebuilding']).lower()}",
        f"revision   {report['revision']}",
    ]
    if report.get("error"):
        lines.append(f"error      {report['error']}")
    if "checksum" in report:
        lines.append(f"sha256     {report['checksum']}")
    lines.append("chain (oldest first):")
    rows = [("NAME", "SIZE", "ALLOCATED", "USER", "REMOVED", "CREATED", "LABELS")]
    for layer in report["layers"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(layer["labels"].items())) or "-"
        rows.append(
            (
                layer["name"],
                units.format_size(layer["size"]) if layer["size"] else "0B",
                units.format_size(layer["allocated"]) if layer["allocated"] else "0B",
                "yes" if layer["user_created"] else "no",
                "yes" if layer["removed"] else "no",
                layer["created"] or "-",
                labels,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"
