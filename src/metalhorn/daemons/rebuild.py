"""`metalhorn engine add-replica` / `engine rm-replica`: drive a running engine's rebuilds by hand.

The engine does the work (storage/engine/rebuild.py); these commands send one control request and, with --wait,
follow the progress that `engine info` shows until the rebuild ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from metalhorn.common import errors, units
from metalhorn.daemons import runtime
from metalhorn.storage.engine import control


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = commands.add_parser(
        "add-replica",
        help="add a replica to a running engine and rebuild it (WO until its data is complete, then RW)",
        description="Starts a rebuild: a new, stale or ERR replica gets the volume's data while I/O goes on.",
    )
    add.add_argument("--control", required=True, help="the engine's control endpoint (its --control)")
    add.add_argument("address", metavar="ADDR", help="replica server tcp://HOST:PORT, HOST:PORT or unix:PATH")
    add.add_argument("--wait", action="store_true", help="follow the progress until the rebuild ends")
    add.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up waiting after this")
    add.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    add.set_defaults(func=_add)

    rm = commands.add_parser("rm-replica", help="remove a replica from a running engine")
    rm.add_argument("--control", required=True, help="the engine's control endpoint (its --control)")
    rm.add_argument("address", metavar="ADDR", help="the replica's address as the engine lists it")
    rm.set_defaults(func=_rm)


def _add(args: argparse.Namespace) -> int:
    progress = runtime.run(control.request(args.control, {"op": "add_replica", "address": args.address}))
    if args.wait:
        progress = runtime.run(_follow(args.control, args.address, timeout=args.timeout, quiet=args.output == "json"))
    if args.output == "json":
        print(json.dumps(progress, indent=2))
    else:
        print(render_progress(progress))
    if progress.get("state") == "error":
        return 1
    return 0


async def _follow(address: str, replica: str, *, timeout: float, quiet: bool) -> dict[str, Any]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        info = await control.request(address, {"op": "info"})
        progress: dict[str, Any] = next((p for p in info.get("rebuilds", []) if p.get("address") == replica), {})
        if progress.get("state") in ("done", "error"):
            return dict(progress)
        if not quiet and progress:
            sys.stderr.write("\r" + render_progress(progress))
            sys.stderr.flush()
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"rebuild of {replica} did not end within {timeout}s; see `metalhorn engine info`")
        await asyncio.sleep(0.5)


def _rm(args: argparse.Namespace) -> int:
    runtime.run(control.request(args.control, {"op": "rm_replica", "address": args.address}))
    print(f"removed {args.address}")
    return 0


def render_progress(progress: dict[str, Any]) -> str:
    """One line per rebuild: state, percentage and how many bytes really crossed the wire."""
    total = int(progress.get("total") or 0)
    done = int(progress.get("done") or 0)
    pct = f"{100 * done / total:.0f}%" if total else "-"
    line = (
        f"rebuild {progress.get('address')}  {progress.get('state')}  {pct}  "
        f"examined {units.format_size(done)}/{units.format_size(total)}  "
        f"sent {units.format_size(int(progress.get('transferred') or 0))}  "
        f"skipped {units.format_size(int(progress.get('skipped') or 0))}"
    )
    if progress.get("error"):
        line += f"  error {progress['error']}"
    return line
