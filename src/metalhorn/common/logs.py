"""Logging for daemons: one line per event, stable key=value fields. Libraries only call getLogger."""

from __future__ import annotations

import logging
import sys


def setup(level: str = "INFO") -> None:
    """Configure the root logger of a daemon process (never called by library code)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # httpx logs every request at INFO: one line per agent sync and per CLI poll drowns the events that matter.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def kv(**fields: object) -> str:
    """Render bound fields as `key=value` pairs in a stable order."""
    return " ".join(f"{key}={value}" for key, value in fields.items())
