#!/usr/bin/python3
"""A write workload through libnbd (a third-party NBD client) that records every acknowledged write.

Runs under Debian's /usr/bin/python3 (the only interpreter with the `nbd` binding). Each write fills one 4 KiB
block with a pattern derived from (block, sequence number). Before a write it records `try BLOCK SEQ`, after the
server acknowledged it `ack BLOCK SEQ`; lines are flushed at once, so the record survives any crash. It stops at
the first I/O error (recording `error SECONDS_SINCE_START MESSAGE`), at --count writes, or at --seconds.

With --reconnect it does not stop at an error: it records it, drops the connection and keeps trying to connect
again (for fault injection, where the engine itself may be killed and restarted) and writes on. --start-seq lets
several runs append to one record with ever-growing sequence numbers.

Usage: acked_writer.py URI RECORD --blocks N [--count N] [--seconds S] [--seed N] [--flush-every N]
                       [--reconnect] [--start-seq N]
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
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--start-seq", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.monotonic()
    deadline = start + args.seconds
    handle = connect(args.uri, deadline if args.reconnect else None)
    with open(args.record, "a", buffering=1) as record:
        record.write("start\n")
        for seq in range(args.start_seq, args.start_seq + args.count):
            if time.monotonic() > deadline:
                break
            if handle is None:
                handle = connect(args.uri, deadline)
                if handle is None:
                    break
            block = rng.randrange(args.blocks)
            record.write(f"try {block} {seq}\n")
            try:
                handle.pwrite(pattern(block, seq), block * BLOCK)
                if args.flush_every and seq % args.flush_every == 0:
                    handle.flush()
            except nbd.Error as exc:
                record.write(f"error {time.monotonic() - start:.3f} {exc}\n")
                if not args.reconnect:
                    return 3
                handle = None  # libnbd closes the old connection when its handle goes
                time.sleep(0.05)
                continue
            record.write(f"ack {block} {seq}\n")
        record.write("done\n")
    if handle is not None:
        handle.shutdown()
    return 0


def connect(uri, deadline):
    """Connect; with a deadline keep retrying (the engine may be restarting) and give None when it passes."""
    while True:
        handle = nbd.NBD()
        try:
            handle.connect_uri(uri)
            return handle
        except nbd.Error:
            del handle  # libnbd closes a handle when the last reference goes
            if deadline is None:
                raise
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
