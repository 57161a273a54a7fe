"""Options every API command shares (--manager, --token-file, -o) and the bounded wait with a progress line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from metalhorn.common import errors
from metalhorn.control import client as client_mod
from metalhorn.control.cli import output


def add_client_options(parser: argparse.ArgumentParser, *, formats: bool = True) -> None:
    parser.add_argument(
        "--manager",
        default=None,
        help=f"manager URL (default: $METALHORN_MANAGER or {client_mod.DEFAULT_MANAGER})",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="the manager's token file (default: $METALHORN_TOKEN_FILE, $METALHORN_TOKEN, or metalhorn up's)",
    )
    if formats:
        parser.add_argument("-o", "--output", choices=output.FORMATS, default="table", help="output format")


def connect(args: argparse.Namespace) -> client_mod.Client:
    return client_mod.Client(client_mod.resolve_target(manager=args.manager, token_file=args.token_file))


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str], *, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    fmt = getattr(args, "output", "table")
    text = human(data) if fmt == "table" else output.structured(data, fmt)
    out.write(text + "\n")
    out.flush()


def wait_for(
    fetch: Callable[[], Mapping[str, Any]],
    done: Callable[[Mapping[str, Any]], bool],
    *,
    what: str,
    timeout: float,
    progress: Callable[[Mapping[str, Any]], str | None] | None = None,
    interval: float = 0.5,
    out: TextIO | None = None,
) -> Mapping[str, Any]:
    """Poll until `done(record)`, drawing `progress(record)` on one terminal line; bounded by `timeout`."""
    out = out or sys.stderr
    deadline = time.monotonic() + timeout
    drawn = False
    record = fetch()
    try:
        while not done(record):
            if time.monotonic() >= deadline:
                reasons = "; ".join((record.get("status") or {}).get("reasons") or []) or "no reason reported"
                raise errors.Unavailable(
                    f"timed out after {timeout:g}s waiting for {what} ({reasons}); "
                    "check `metalhorn volume get` / `metalhorn node ls`, or wait longer with --timeout"
                )
            line = progress(record) if progress else None
            if line and out.isatty():
                out.write(f"\r{line}\x1b[K")
                out.flush()
                drawn = True
            time.sleep(interval)
            record = fetch()
    finally:
        if drawn:
            out.write("\n")
            out.flush()
    return record
