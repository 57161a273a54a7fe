"""Sizes as users write them ("10G", "512MiB", "4096") and as we print them."""

from __future__ import annotations

import re

from metalhorn.common import errors

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a size. Bare suffixes K/M/G/T are binary (as in Longhorn and qemu); KB/MB/... are decimal."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(text)
        if not match:
            raise errors.InvalidArgument(f"size {text!r} is not a number with an optional unit like 10G or 512MiB")
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise errors.InvalidArgument(f"size {text!r} has an unknown unit {match.group(2)!r}; use K, M, G or T")
        value = int(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise errors.InvalidArgument(f"size {text!r} must be greater than zero")
    return value


def format_size(value: int) -> str:
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{suffix}"
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value}B"
