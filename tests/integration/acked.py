"""Reads the record of peers/acked_writer.py and checks a volume image (a file, or bytes) against it."""

from __future__ import annotations

import dataclasses
import pathlib

BLOCK = 4096


def pattern(block: int, seq: int) -> bytes:
    head = f"block={block} seq={seq};".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


@dataclasses.dataclass
class Record:
    acked: dict[int, int]  # block -> last acknowledged sequence number
    in_flight: dict[int, int]  # block -> sequence number tried but never acknowledged
    ack_count: int
    errors: list[tuple[float, str]]
    done: bool
    # block -> every sequence number tried after its last acknowledged one (any of them may have landed)
    unacked: dict[int, list[int]] = dataclasses.field(default_factory=dict)


def read_record(path: pathlib.Path) -> Record:
    acked: dict[int, int] = {}
    tried: dict[int, int] = {}
    unacked: dict[int, list[int]] = {}
    errors: list[tuple[float, str]] = []
    ack_count = 0
    done = False
    for line in path.read_text().splitlines():
        parts = line.split(" ", 2)
        if parts[0] == "try":
            tried[int(parts[1])] = int(parts[2])
            unacked.setdefault(int(parts[1]), []).append(int(parts[2]))
        elif parts[0] == "ack":
            acked[int(parts[1])] = int(parts[2])
            unacked.pop(int(parts[1]), None)
            ack_count += 1
        elif parts[0] == "error":
            errors.append((float(parts[1]), parts[2] if len(parts) > 2 else ""))
        elif parts[0] == "done":
            done = True
    in_flight = {b: s for b, s in tried.items() if acked.get(b) != s}
    return Record(acked=acked, in_flight=in_flight, ack_count=ack_count, errors=errors, done=done, unacked=unacked)


def lost_writes(record: Record, image: pathlib.Path) -> list[str]:
    """Every block whose last acknowledged write does not read back (an in-flight successor is allowed)."""
    return lost_in(record, image.read_bytes())


def lost_in(record: Record, data: bytes) -> list[str]:
    """lost_writes() over a volume image in memory (an NBD read-back, or one replica's data)."""
    problems = []
    view = memoryview(data)
    for block, seq in sorted(record.acked.items()):
        got = bytes(view[block * BLOCK : (block + 1) * BLOCK])
        allowed = [pattern(block, seq)]
        allowed += [pattern(block, later) for later in record.unacked.get(block, ()) if later > seq]
        if block in record.in_flight and record.in_flight[block] > seq:
            allowed.append(pattern(block, record.in_flight[block]))
        if got not in allowed:
            problems.append(f"block {block}: expected seq {seq}, read {got[:32]!r}")
    return problems
