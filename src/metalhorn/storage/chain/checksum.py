"""Block checksums of a snapshot file: the `<snapshot>.img.checksum` JSON (pure: bytes and values in, values out).

Longhorn records one checksum per snapshot file in ``volume-snap-X.img.checksum`` with the JSON fields
``method, checksum, change_time, last_hashed_at, silently_corrupted`` (longhorn-engine ``types.SnapshotHashInfo``).
We write the same fields, so Longhorn tooling can read the file, and add two of our own:

- ``block_size`` and ``blocks``: the SHA-256 hex digest of every 2 MiB block of the file (holes read as zeros).
  Per-block digests let `snapshot verify` name the damaged region and let a rebuild skip 2 MiB blocks whose
  digests already match on the target (DESIGN.md §2).
- ``checksum`` is SHA-256 over the concatenated raw block digests (a hash list), so two replicas compare one string.

``method`` is ``"sha256-2MiB"``; Longhorn writes ``"crc64"`` over the whole file, so a Longhorn checksum file is
recognised by its method and re-hashed rather than compared. ``change_time`` is the file's ctime when hashing
started (RFC 3339 with nanoseconds): a hash job whose file changed meanwhile throws its result away.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from metalhorn.common import errors

METHOD = "sha256-2MiB"
BLOCK_SIZE = 2 << 20


@functools.cache
def zero_digest(length: int = BLOCK_SIZE) -> str:
    """Digest of `length` zero bytes: the digest of a block that is a hole in the file."""
    return hashlib.sha256(bytes(length)).hexdigest()


def block_digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def combine(blocks: Iterable[str]) -> str:
    """The file checksum: SHA-256 over the raw bytes of the block digests, in order."""
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(bytes.fromhex(block))
    return digest.hexdigest()


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    return (size + block_size - 1) // block_size


def blocks_with_data(extents: Iterable[tuple[int, int]], size: int, block_size: int = BLOCK_SIZE) -> list[bool]:
    """For each block of a `size`-byte file: True when a data extent [(offset, length)] touches it.

    Blocks that no extent touches are holes and need not be read: their digest is zero_digest().
    """
    out = [False] * block_count(size, block_size)
    for offset, length in extents:
        if length <= 0 or offset >= size:
            continue
        first = offset // block_size
        last = (min(offset + length, size) - 1) // block_size
        out[first : last + 1] = [True] * (last - first + 1)
    return out


def format_time(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, e.g. 2024-01-02T03:04:05.123456789Z (Go's time.RFC3339Nano style)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


@dataclasses.dataclass(frozen=True, kw_only=True)
class HashInfo:
    """Contents of one `.img.checksum` file."""

    checksum: str
    change_time: str
    last_hashed_at: str = ""
    silently_corrupted: bool = False
    method: str = METHOD
    block_size: int = BLOCK_SIZE
    blocks: tuple[str, ...] = ()

    @classmethod
    def of_blocks(cls, blocks: Sequence[str], *, change_time: str, last_hashed_at: str = "") -> HashInfo:
        return cls(
            checksum=combine(blocks), change_time=change_time, last_hashed_at=last_hashed_at, blocks=tuple(blocks)
        )

    @property
    def comparable(self) -> bool:
        """True when this record was made by our method (a Longhorn crc64 record must be re-hashed instead)."""
        return self.method == METHOD and self.block_size == BLOCK_SIZE

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "method": self.method,
            "checksum": self.checksum,
            "change_time": self.change_time,
            "last_hashed_at": self.last_hashed_at,
            "silently_corrupted": self.silently_corrupted,
            "block_size": self.block_size,
            "blocks": list(self.blocks),
        }
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, file: str) -> HashInfo:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise errors.CorruptMetadata(f"{file}: not valid JSON") from None
        if not isinstance(obj, dict):
            raise errors.CorruptMetadata(f"{file}: expected a JSON object")
        method, checksum = obj.get("method"), obj.get("checksum")
        if not isinstance(method, str) or not isinstance(checksum, str):
            raise errors.CorruptMetadata(f"{file}: 'method' and 'checksum' must be strings")
        blocks = obj.get("blocks") or []
        block_size = obj.get("block_size", BLOCK_SIZE)
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise errors.CorruptMetadata(f"{file}: 'blocks' must be a list of hex digests")
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
            raise errors.CorruptMetadata(f"{file}: 'block_size' must be a positive integer")
        return cls(
            method=method,
            checksum=checksum,
            change_time=str(obj.get("change_time") or ""),
            last_hashed_at=str(obj.get("last_hashed_at") or ""),
            silently_corrupted=bool(obj.get("silently_corrupted", False)),
            block_size=block_size,
            blocks=tuple(blocks),
        )


def mismatched_blocks(recorded: HashInfo, actual: HashInfo) -> list[int]:
    """Indexes of blocks whose digests differ (a block present in only one record counts as different)."""
    if recorded.checksum == actual.checksum and recorded.blocks == actual.blocks:
        return []
    n = max(len(recorded.blocks), len(actual.blocks))
    return [
        i
        for i in range(n)
        if i >= len(recorded.blocks) or i >= len(actual.blocks) or recorded.blocks[i] != actual.blocks[i]
    ]


def majority(values: dict[str, str]) -> tuple[str, list[str]]:
    """(the value most keys agree on, keys that disagree with it). Ties go to the smallest value, for determinism.

    With two replicas that disagree there is no majority: both are reported as disagreeing, the value is "".
    """
    if not values:
        return "", []
    counts: dict[str, int] = {}
    for value in values.values():
        counts[value] = counts.get(value, 0) + 1
    best = max(sorted(counts), key=lambda v: counts[v])
    if counts[best] * 2 <= len(values) and len(counts) > 1:
        return "", sorted(values)
    return best, sorted(key for key, value in values.items() if value != best)
