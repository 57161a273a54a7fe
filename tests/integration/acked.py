"""Reads the record of peers/acked_writer.py and checks a volume image against it."""

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


def read_record(path: pathlib.Path) -> Record:
    acked: dict[int, int] = {}
    tried: dict[int, int] = {}
    errors: list[tuple[float, str]] = []
    ack_count = 0
    done = False
    for line in path.read_text().splitlines():
        parts = line.split(" ", 2)
        if parts[0] == "try":
            tried[int(parts[1])] = int(parts[2])
        elif parts[0] == "ack":
            acked[int(parts[1])] = int(parts[2])
            ack_count += 1
        elif parts[0] == "error":
            errors.append((float(parts[1]), parts[2] if len(parts) > 2 else ""))
        elif parts[0] == "done":
            done = True
    in_flight = {b: s for b, s in tried.items() if acked.get(b) != s}
    return Record(acked=acked, in_flight=in_flight, ack_count=ack_count, errors=errors, done=done)


def lost_writes(record: Record, image: pathlib.Path) -> list[str]:
    """Every block whose last acknowledged write does not read back (an in-flight successor is allowed)."""
    problems = []
    with image.open("rb") as data:
        for block, seq in sorted(record.acked.items()):
            data.seek(block * BLOCK)
            got = data.read(BLOCK)
            allowed = [pattern(block, seq)]
            if block in record.in_flight and record.in_flight[block] > seq:
                allowed.append(pattern(block, record.in_flight[block]))
            if got not in allowed:
                problems.append(f"block {block}: expected seq {seq}, read {got[:32]!r}")
    return problems
