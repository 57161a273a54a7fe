"""In-memory extent map of a replica's snapshot chain, at 4 KiB granularity.

Longhorn decides which file of the chain holds a block by *allocation*, not content: an allocated block in a
newer layer hides older data (even if it is all zeros), a hole means "look below". This map records exactly that,
so a read needs no file system query:

- ``snap``: one byte per block, the index (1 = oldest) of the newest *snapshot* layer that holds the block,
  0 when no snapshot holds it. One byte per block, as Longhorn does, caps the chain at 255 snapshot layers
  (Longhorn's own limit is 250).
- ``head``: one byte per block, 1 when the head file holds the block.

A block resolves to the head if set, else to its snapshot layer, else it reads as zeros. Runs are found with
``bytearray.find``/``lstrip`` (C loops), so resolving a 1 MiB range costs a handful of Python steps, not 256.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from metalhorn.common import errors

BLOCK_SIZE = 4096
BLOCK_SHIFT = 12
MAX_LAYERS = 255

ZERO = 0
"""Source of a run that reads as zeros (a hole in every layer)."""
HEAD = -1
"""Source of a run held by the head file. Positive sources are snapshot layer indexes (1 = oldest)."""

Run = tuple[int, int, int]
"""(first_block, block_count, source)."""

_ONE = b"\x01"


def blocks_for(size: int) -> int:
    """Number of 4 KiB blocks needed to cover `size` bytes."""
    return (size + BLOCK_SIZE - 1) >> BLOCK_SHIFT


def block_span(offset: int, length: int) -> tuple[int, int]:
    """(first_block, count) of the blocks that a byte range touches, fully or in part."""
    if length <= 0:
        return offset >> BLOCK_SHIFT, 0
    first = offset >> BLOCK_SHIFT
    last = (offset + length - 1) >> BLOCK_SHIFT
    return first, last - first + 1


def extents_to_blocks(extents: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Byte extents [(offset, length)] as found by SEEK_DATA/SEEK_HOLE -> block runs [(first, count)]."""
    return [block_span(offset, length) for offset, length in extents if length > 0]


class ExtentMap:
    """Which layer holds each 4 KiB block: the head, a snapshot layer, or none (zeros)."""

    __slots__ = ("_head", "_layers", "_nblocks", "_snap")

    def __init__(self, nblocks: int) -> None:
        if nblocks < 0:
            raise errors.InvalidArgument(f"extent map needs a block count >= 0, got {nblocks}")
        self._nblocks = nblocks
        self._snap = bytearray(nblocks)
        self._head = bytearray(nblocks)
        self._layers = 0

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        nblocks: int,
        *,
        snapshots: Sequence[Iterable[tuple[int, int]]],
        head: Iterable[tuple[int, int]],
    ) -> ExtentMap:
        """Build from each layer's data extents in bytes, snapshots oldest first, then the head's.

        Extents beyond the volume (a layer file longer than the volume) are clipped.
        """
        emap = cls(nblocks)
        for extents in snapshots:
            emap._layers += 1
            if emap._layers > MAX_LAYERS:
                raise errors.NotSupported(f"snapshot chain longer than {MAX_LAYERS} layers")
            value = bytes((emap._layers,))
            for block, n in extents_to_blocks(extents):
                first, count = emap._clip(block, n)
                if count:
                    emap._snap[first : first + count] = value * count
        for block, n in extents_to_blocks(head):
            first, count = emap._clip(block, n)
            if count:
                emap._head[first : first + count] = _ONE * count
        return emap

    def _clip(self, first: int, count: int) -> tuple[int, int]:
        first = min(first, self._nblocks)
        return first, max(0, min(first + count, self._nblocks) - first)

    # -- queries ------------------------------------------------------------------------------------------------

    @property
    def nblocks(self) -> int:
        return self._nblocks

    @property
    def layers(self) -> int:
        """Number of snapshot layers below the head."""
        return self._layers

    def source(self, block: int) -> int:
        self._check(block, 1)
        if self._head[block]:
            return HEAD
        return self._snap[block]

    def held_below_head(self, block: int) -> bool:
        """True when a snapshot layer holds the block, so the head must never punch a hole there."""
        self._check(block, 1)
        return self._snap[block] != 0

    def head_allocated(self, block: int) -> bool:
        self._check(block, 1)
        return self._head[block] != 0

    def head_blocks(self) -> int:
        return self._nblocks - self._head.count(0)

    def runs(self, first: int, count: int) -> list[Run]:
        """Coalesced runs [(first_block, count, source)] covering blocks [first, first+count)."""
        self._check(first, count)
        out: list[Run] = []
        head = self._head
        pos = first
        end = first + count
        while pos < end:
            if head[pos]:
                stop = head.find(0, pos, end)
                stop = end if stop < 0 else stop
                out.append((pos, stop - pos, HEAD))
            else:
                stop = head.find(1, pos, end)
                stop = end if stop < 0 else stop
                self._snap_runs(pos, stop, out)
            pos = stop
        return out

    def _snap_runs(self, start: int, stop: int, out: list[Run]) -> None:
        segment = self._snap[start:stop]
        i = 0
        n = len(segment)
        while i < n:
            value = segment[i]
            rest = segment[i:]
            length = n - i - len(rest.lstrip(bytes((value,))))
            out.append((start + i, length, value))
            i += length

    def below_runs(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        """Runs [(first_block, count, held_below_head)] covering blocks [first, first+count)."""
        self._check(first, count)
        out: list[tuple[int, int, bool]] = []
        segment = self._snap[first : first + count]
        i = 0
        while i < count:
            if segment[i]:
                stop = segment.find(0, i)
                stop = count if stop < 0 else stop
                out.append((first + i, stop - i, True))
            else:
                stop = count - len(segment[i:].lstrip(b"\x00"))
                out.append((first + i, stop - i, False))
            i = stop
        return out

    def layer_blocks(self, layer: int) -> int:
        """Blocks that resolve to snapshot `layer` when no head covers them (for accounting and tests)."""
        return self._snap.count(layer)

    # -- updates ------------------------------------------------------------------------------------------------

    def mark_head(self, first: int, count: int) -> None:
        self._check(first, count)
        self._head[first : first + count] = _ONE * count

    def clear_head(self, first: int, count: int) -> None:
        self._check(first, count)
        self._head[first : first + count] = bytes(count)

    def snapshot(self) -> int:
        """Fold the head into a new newest snapshot layer; the head becomes empty. Returns the new layer index."""
        if self._layers >= MAX_LAYERS:
            raise errors.NotSupported(f"snapshot chain longer than {MAX_LAYERS} layers")
        self._layers += 1
        value = bytes((self._layers,))
        head = self._head
        pos = 0
        end = self._nblocks
        while pos < end:
            start = head.find(1, pos)
            if start < 0:
                break
            stop = head.find(0, start)
            stop = end if stop < 0 else stop
            self._snap[start:stop] = value * (stop - start)
            pos = stop
        self._head = bytearray(end)
        return self._layers

    def grow(self, nblocks: int) -> None:
        """Expansion: new blocks are holes everywhere. Shrinking is not supported (as in Longhorn)."""
        if nblocks < self._nblocks:
            raise errors.InvalidArgument(f"cannot shrink the extent map from {self._nblocks} to {nblocks} blocks")
        extra = nblocks - self._nblocks
        self._snap += bytes(extra)
        self._head += bytes(extra)
        self._nblocks = nblocks

    def _check(self, first: int, count: int) -> None:
        if first < 0 or count < 0 or first + count > self._nblocks:
            raise errors.OutOfRange(f"blocks [{first}, {first + count}) outside the map of {self._nblocks} blocks")
