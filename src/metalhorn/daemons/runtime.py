"""Event loop set-up shared by the daemons: uvloop where installed, the standard loop otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pure-Python fallback
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
