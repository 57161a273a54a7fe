"""Payloads of the rebuild frames FILE_READ / FILE_WRITE / FILE_CHECKSUM (pure; codec.py has the header).

A rebuild copies the *files* of a snapshot chain, not the volume: allocation decides the chain (DESIGN.md §2), so a
hole and an allocated block of zeros are different things and both must arrive as they are. The unit that crosses
the wire is therefore a range of one file described by its data extents:

    extents body  = u32 count, count x (u32 offset_in_range, u32 length), then the data of every extent in order
    FILE_READ     request payload: file name (UTF-8); reply payload: extents body of [offset, offset+length)
    FILE_WRITE    request payload: u16 name length, name, extents body; the receiver writes the extents and
                  leaves holes everywhere else in [offset, offset+length)
    FILE_CHECKSUM request payload: file name; reply payload: one DIGEST_SIZE digest per SYNC_BLOCK of the range,
                  all zero bytes for a block with no allocated byte

A block digest covers the allocation map of its 4 KiB blocks *and* the allocated data, so two files agree on a
block only when they hold the same data at the same places.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from metalhorn.common import errors

SYNC_BLOCK = 2 << 20  # checksum unit: a stale replica re-copies only the 2 MiB blocks that differ
ALLOC_UNIT = 4096  # allocation granularity recorded in a digest (the extent map's block)
DIGEST_SIZE = 16
EMPTY = bytes(DIGEST_SIZE)

_COUNT = struct.Struct(">I")
_EXTENT = struct.Struct(">II")
_NAME = struct.Struct(">H")

Extents = Sequence[tuple[int, int]]


def encode_name(name: str) -> bytes:
    data = name.encode()
    if not data or len(data) > 4096:
        raise errors.InvalidArgument(f"file name of {len(data)} bytes: expected 1-4096")
    return data


def decode_name(payload: bytes) -> str:
    try:
        name = payload.decode()
    except UnicodeDecodeError:
        raise errors.InvalidArgument("file name is not UTF-8") from None
    if not name or "/" in name or name in (".", ".."):
        raise errors.InvalidArgument(f"bad file name {name!r}")
    return name


def body_header(extents: Extents) -> bytes:
    """The head of an extents body; the data of the extents follows it."""
    out = bytearray(_COUNT.pack(len(extents)))
    for offset, length in extents:
        out += _EXTENT.pack(offset, length)
    return bytes(out)


def decode_body(body: bytes | memoryview, *, range_length: int) -> tuple[list[tuple[int, int]], memoryview]:
    """(extents relative to the range, their data concatenated) of an extents body; checks every bound."""
    view = memoryview(body)
    if len(view) < _COUNT.size:
        raise errors.InvalidArgument("extents body shorter than its count")
    (count,) = _COUNT.unpack_from(view, 0)
    head = _COUNT.size + count * _EXTENT.size
    if len(view) < head:
        raise errors.InvalidArgument(f"extents body announces {count} extents but is {len(view)} bytes")
    extents = [_EXTENT.unpack_from(view, _COUNT.size + i * _EXTENT.size) for i in range(count)]
    total = 0
    last_end = 0
    for offset, length in extents:
        if length <= 0 or offset < last_end or offset + length > range_length:
            raise errors.InvalidArgument(f"extent ({offset}, {length}) out of order or outside {range_length}")
        last_end = offset + length
        total += length
    if len(view) - head != total:
        raise errors.InvalidArgument(f"extents body carries {len(view) - head} data bytes, extents say {total}")
    return extents, view[head:]


def data_bytes(body: bytes | memoryview) -> int:
    """How many data bytes an extents body carries (for rebuild statistics)."""
    count: int = _COUNT.unpack_from(body, 0)[0]
    return len(body) - _COUNT.size - count * _EXTENT.size


def write_payload(name: str, body: bytes | memoryview) -> bytes:
    encoded = encode_name(name)
    return b"".join((_NAME.pack(len(encoded)), encoded, body))


def split_write_payload(payload: bytes) -> tuple[str, memoryview]:
    view = memoryview(payload)
    if len(view) < _NAME.size:
        raise errors.InvalidArgument("FILE_WRITE payload shorter than its name length")
    (size,) = _NAME.unpack_from(view, 0)
    if len(view) < _NAME.size + size:
        raise errors.InvalidArgument("FILE_WRITE payload shorter than its name")
    return decode_name(bytes(view[_NAME.size : _NAME.size + size])), view[_NAME.size + size :]


def block_digest(extents: Extents, data: Sequence[bytes | memoryview], *, block_length: int) -> bytes:
    """Digest of one SYNC_BLOCK: its 4 KiB allocation bitmap plus the allocated data (EMPTY when nothing is)."""
    if not extents:
        return EMPTY
    units = -(-block_length // ALLOC_UNIT)
    bitmap = bytearray(units)
    for offset, length in extents:
        first = offset // ALLOC_UNIT
        last = -(-(offset + length) // ALLOC_UNIT)
        bitmap[first:last] = b"\x01" * (last - first)
    digest = hashlib.blake2b(bitmap, digest_size=DIGEST_SIZE)
    for piece in data:
        digest.update(piece)
    return digest.digest()


def split_digests(payload: bytes) -> list[bytes]:
    if len(payload) % DIGEST_SIZE:
        raise errors.ProtocolError(f"checksum reply of {len(payload)} bytes is not a multiple of {DIGEST_SIZE}")
    return [payload[i : i + DIGEST_SIZE] for i in range(0, len(payload), DIGEST_SIZE)]
