"""Longhorn-compatible replica metadata: volume.meta, <disk>.img.meta and revision.counter (DESIGN.md §2).

The formats follow longhorn-engine's replica package so that a Longhorn replica directory can be opened:

- ``volume.meta``: JSON object with Go field names ``Size, Head, Dirty, Rebuilding, Error, Parent, SectorSize,
  BackingFilePath``. ``Parent`` is the newest snapshot file below the head ("" when none).
- ``<file>.img.meta``: JSON ``Name, Parent, Removed, UserCreated, Created, Labels``; ``Created`` is an RFC 3339
  time string and ``Labels`` a string map (``null`` when empty, as Go writes a nil map).
- ``revision.counter``: one 4096-byte block holding a decimal ASCII int64 padded with NUL bytes.

Everything here is a pure function of bytes; decoding anything unexpected raises CorruptMetadata naming the file,
because a damaged replica must be refused, never silently re-created.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from metalhorn.common import errors

VOLUME_META = "volume.meta"
REVISION_COUNTER = "revision.counter"
DISK_META_SUFFIX = ".meta"
CHECKSUM_SUFFIX = ".checksum"
SECTOR_SIZE = 512
REVISION_BLOCK = 4096
MAX_REVISION = (1 << 63) - 1

_HEAD_RE = re.compile(r"^volume-head-(\d+)\.img$")
_SNAP_RE = re.compile(r"^volume-snap-(.+)\.img$")
_SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


# -- names ------------------------------------------------------------------------------------------------------


def head_file(index: int) -> str:
    return f"volume-head-{index:03d}.img"


def head_index(name: str) -> int | None:
    match = _HEAD_RE.match(name)
    return int(match.group(1)) if match else None


def next_head_file(current: str) -> str:
    index = head_index(current)
    if index is None:
        raise errors.CorruptMetadata(f"{VOLUME_META}: head {current!r} is not named volume-head-NNN.img")
    return head_file(index + 1)


def snapshot_file(name: str) -> str:
    """File name of snapshot `name`; the name must be safe as part of a file name."""
    if not _SNAPSHOT_NAME_RE.match(name):
        raise errors.InvalidArgument(
            f"snapshot name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return f"volume-snap-{name}.img"


def snapshot_name(file: str) -> str | None:
    match = _SNAP_RE.match(file)
    return match.group(1) if match else None


def meta_file(disk: str) -> str:
    return disk + DISK_META_SUFFIX


# -- decoding helpers -------------------------------------------------------------------------------------------


def _load_object(data: bytes, file: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.CorruptMetadata(f"{file}: not valid JSON ({exc}); the replica needs repair or a rebuild") from None
    if not isinstance(obj, dict):
        raise errors.CorruptMetadata(f"{file}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _field(obj: Mapping[str, Any], file: str, key: str, kind: type, default: Any = None) -> Any:
    if key not in obj or (obj[key] is None and default is not None):
        if default is None:
            raise errors.CorruptMetadata(f"{file}: field {key!r} is missing")
        return default
    value = obj[key]
    # bool is a subclass of int; a size of `true` is still garbage.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise errors.CorruptMetadata(f"{file}: field {key!r} should be {kind.__name__}, found {value!r}")
    return value


# -- volume.meta ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class VolumeMeta:
    size: int
    head: str
    dirty: bool = False
    rebuilding: bool = False
    error: str = ""
    parent: str = ""
    sector_size: int = SECTOR_SIZE
    backing_file_path: str = ""

    def to_json(self) -> bytes:
        obj = {
            "Size": self.size,
            "Head": self.head,
            "Dirty": self.dirty,
            "Rebuilding": self.rebuilding,
            "Error": self.error,
            "Parent": self.parent,
            "SectorSize": self.sector_size,
            "BackingFilePath": self.backing_file_path,
        }
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, file: str = VOLUME_META) -> VolumeMeta:
        obj = _load_object(data, file)
        meta = cls(
            size=_field(obj, file, "Size", int),
            head=_field(obj, file, "Head", str),
            dirty=_field(obj, file, "Dirty", bool, False),
            rebuilding=_field(obj, file, "Rebuilding", bool, False),
            error=_field(obj, file, "Error", str, ""),
            parent=_field(obj, file, "Parent", str, ""),
            sector_size=_field(obj, file, "SectorSize", int, SECTOR_SIZE),
            backing_file_path=_field(obj, file, "BackingFilePath", str, ""),
        )
        if meta.size <= 0:
            raise errors.CorruptMetadata(f"{file}: Size {meta.size} must be positive")
        if head_index(meta.head) is None:
            raise errors.CorruptMetadata(f"{file}: Head {meta.head!r} is not named volume-head-NNN.img")
        if meta.sector_size <= 0:
            raise errors.CorruptMetadata(f"{file}: SectorSize {meta.sector_size} must be positive")
        return meta


# -- <disk>.img.meta --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiskMeta:
    name: str
    parent: str = ""
    removed: bool = False
    user_created: bool = False
    created: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        obj = {
            "Name": self.name,
            "Parent": self.parent,
            "Removed": self.removed,
            "UserCreated": self.user_created,
            "Created": self.created,
            "Labels": dict(self.labels) if self.labels else None,
        }
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, file: str) -> DiskMeta:
        obj = _load_object(data, file)
        labels = obj.get("Labels")
        if labels is None:
            labels = {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise errors.CorruptMetadata(f"{file}: field 'Labels' should map strings to strings, found {labels!r}")
        return cls(
            name=_field(obj, file, "Name", str),
            parent=_field(obj, file, "Parent", str, ""),
            removed=_field(obj, file, "Removed", bool, False),
            user_created=_field(obj, file, "UserCreated", bool, False),
            created=_field(obj, file, "Created", str, ""),
            labels=labels,
        )


def chain(head: str, disks: Mapping[str, DiskMeta]) -> list[str]:
    """The live chain, oldest first, ending with `head`, following each disk's Parent.

    Raises CorruptMetadata when a disk in the chain has no metadata or the Parent links loop.
    """
    out: list[str] = []
    seen: set[str] = set()
    cur = head
    while cur:
        if cur in seen:
            raise errors.CorruptMetadata(f"{meta_file(cur)}: Parent links form a loop through {cur}")
        disk = disks.get(cur)
        if disk is None:
            raise errors.CorruptMetadata(f"{meta_file(cur)}: missing, but {cur} is in the chain of {head}")
        seen.add(cur)
        out.append(cur)
        cur = disk.parent
    out.reverse()
    return out


# -- revision.counter -------------------------------------------------------------------------------------------


def encode_revision(revision: int) -> bytes:
    if not 0 <= revision <= MAX_REVISION:
        raise errors.InvalidArgument(f"revision {revision} outside int64")
    text = str(revision).encode()
    return text + bytes(REVISION_BLOCK - len(text))


def decode_revision(data: bytes, *, file: str = REVISION_COUNTER) -> int:
    if not data:
        raise errors.CorruptMetadata(f"{file}: empty; expected a decimal counter padded with NUL bytes")
    if len(data) > REVISION_BLOCK:
        raise errors.CorruptMetadata(f"{file}: {len(data)} bytes, expected at most {REVISION_BLOCK}")
    text = bytes(data).rstrip(b"\x00")
    if not text or not text.isdigit() or b"\x00" in text:
        raise errors.CorruptMetadata(f"{file}: {bytes(text[:32])!r} is not a decimal revision counter")
    value = int(text)
    if value > MAX_REVISION:
        raise errors.CorruptMetadata(f"{file}: revision {value} exceeds int64")
    return value


def describe_chain(files: Sequence[str]) -> str:
    return " <- ".join(files) if files else "(empty)"
