#!/usr/bin/python3
"""A write workload through libnbd (a third-party NBD client) that records every acknowledged write.

Runs under Debian's /usr/bin/python3 (the only interpreter with the `nbd` binding). Each write fills one 4 KiB
block with a pattern derived from (block, sequence number). Before a write it records `try BLOCK SEQ`, after the
server acknowledged it `ack BLOCK SEQ`; lines are flushed at once, so the record survives any crash. It stops at
the first I/O error (recording `error SECONDS_SINCE_START MESSAGE`), at --count writes, or at --seconds.

Usage: acked_writer.py URI RECORD --blocks N [--count N] [--seconds S] [--seed N] [--flush-every N]
"""

import argparse
import random
import sys
import time

import nbd

BLOCK = 4096


def pattern(block: int, seq: int) -> bytes:
    head = f"block={block} seq={seq};".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("record")
    parser.add_argument("--blocks", type=int, required=True)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush-every", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    handle = nbd.NBD()
    handle.connect_uri(args.uri)
    start = time.monotonic()
    with open(args.record, "a", buffering=1) as record:
        record.write("start\n")
        for seq in range(1, args.count + 1):
            if time.monotonic() - start > args.seconds:
                break
            block = rng.randrange(args.blocks)
            record.write(f"try {block} {seq}\n")
            try:
                handle.pwrite(pattern(block, seq), block * BLOCK)
                if args.flush_every and seq % args.flush_every == 0:
                    handle.flush()
            except nbd.Error as exc:
                record.write(f"error {time.monotonic() - start:.3f} {exc}\n")
                return 3
            record.write(f"ack {block} {seq}\n")
        record.write("done\n")
    handle.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
