"""Rebuild benchmark: full rebuild vs `cp --sparse=always`, and bytes sent by a stale-replica rebuild.

Setup: replica A (`metalhorn replica serve`) of SIZE bytes, half of it (random 1 MiB chunks) filled with random data
through the replica protocol; `metalhorn engine serve` over A alone (no auto-rebuild). Then per round:

1. full:  start an empty replica B, `metalhorn engine add-replica --wait`; seconds and bytes from the engine's
          rebuild progress. Right after, `cp --sparse=always` of A's chain files to a fresh directory, timed.
          Ratio = rebuild throughput / cp throughput (same data bytes, same page-cache state). Goal >= 0.7.
2. stale: SIGKILL B, write 1 % of the volume through NBD (qemu-io, 1 MiB writes at random places), restart B,
          `add-replica` again; the engine counts the data bytes it sent. Goal <= 2 % of the volume.

Writes bench/results/rebuild-<date>.md (and .json). Every process is started and stopped by PID (bench/common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

ROOT = Path(__file__).resolve().parent
METALHORN = [sys.executable, "-m", "metalhorn"]
MIB = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=int, default=4, help="volume size in GiB (default 4)")
    parser.add_argument("--fill", type=float, default=0.5, help="fraction of the volume with random data")
    parser.add_argument("--change", type=float, default=0.01, help="fraction changed before the stale rebuild")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (each: full rebuild + cp + stale rebuild)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a new one in /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args()


async def fill(address: str, size: int, fraction: float, seed: int) -> int:
    """Write random 1 MiB chunks over `fraction` of the volume straight to replica A; returns bytes written."""
    sys.path.insert(0, str(ROOT.parent / "src"))
    from metalhorn.storage.wire import client as wire_client

    rng = random.Random(seed)
    chunks = [i for i in range(size // MIB) if rng.random() < fraction]
    client = await wire_client.ReplicaClient.connect(address, timeout=60)
    try:
        pending: set[asyncio.Future[Any]] = set()
        for index in chunks:
            pending.add(client.submit_write(index * MIB, rng.randbytes(MIB)))
            if len(pending) >= 16:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    fut.result()
        for fut in pending:
            await fut
        await client.flush()
    finally:
        client.close()
    return len(chunks) * MIB


def metalhorn(*args: str, timeout: float = 3600) -> str:
    done = subprocess.run([*METALHORN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise common.BenchError(f"metalhorn {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def allocated(directory: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in directory.glob("volume-*.img"))


def replica(work: Path, name: str, port: int, size: int) -> common.Child:
    child = common.Child(
        f"replica-{name}",
        [*METALHORN, "replica", "serve", str(work / name), "--size", str(size), "--listen", f"127.0.0.1:{port}"],
        log_path=work / f"replica-{name}.log",
    ).start()
    common.wait_until(f"replica {name}", lambda: common.tcp_accepts("127.0.0.1", port), timeout=60, children=[child])
    return child


def add_replica(control: str, address: str) -> dict[str, Any]:
    out = metalhorn("engine", "add-replica", "--control", control, address, "--wait", "-o", "json")
    progress: dict[str, Any] = json.loads(out)
    if progress.get("state") != "done":
        raise common.BenchError(f"rebuild of {address} failed: {progress}")
    return progress


def main() -> int:
    args = parse_args()
    size = args.size_gib << 30
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mh-rebuild-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    children: list[common.Child] = []
    rounds: list[dict[str, Any]] = []
    started = datetime.datetime.now(datetime.UTC)
    try:
        port_a = common.free_port()
        children.append(replica(work, "a", port_a, size))
        t0 = time.monotonic()
        written = asyncio.run(fill(f"127.0.0.1:{port_a}", size, args.fill, seed=1))
        print(f"filled {written / MIB:.0f} MiB in {time.monotonic() - t0:.1f} s", flush=True)
        control = f"unix:{work / 'engine.ctl'}"
        nbd_port = common.free_port()
        engine = common.Child(
            "engine",
            [*METALHORN, "engine", "serve", "bench", "--size", str(size), "--replica", f"tcp://127.0.0.1:{port_a}",
             "--listen", f"127.0.0.1:{nbd_port}", "--control", control, "--no-auto-rebuild"],
            log_path=work / "engine.log",
        ).start()  # fmt: skip
        children.append(engine)
        uri = f"nbd://127.0.0.1:{nbd_port}/bench"
        common.wait_until("engine", lambda: common.nbd_ready(uri), timeout=60, children=[engine])
        for round_no in range(1, args.repeat + 1):
            name = f"b{round_no}"
            port_b = common.free_port()
            b = replica(work, name, port_b, size)
            children.append(b)
            address = f"tcp://127.0.0.1:{port_b}"
            t0 = time.monotonic()
            full = add_replica(control, address)
            full_wall = time.monotonic() - t0
            data = allocated(work / "a")
            copy_dir = work / f"cp{round_no}"
            copy_dir.mkdir()
            sources = sorted(str(p) for p in (work / "a").glob("volume-*.img"))
            t0 = time.monotonic()
            subprocess.run(["cp", "--sparse=always", *sources, str(copy_dir)], check=True, timeout=3600)
            subprocess.run(["sync", "-f", str(copy_dir)], check=True, timeout=600)
            cp_seconds = time.monotonic() - t0
            shutil.rmtree(copy_dir)
            print(f"round {round_no}: full rebuild {full_wall:.1f} s, cp {cp_seconds:.1f} s", flush=True)

            b.stop(signum=9)
            common.wait_until("B ERR", lambda: '"ERR"' in metalhorn("engine", "info", "--control", control, "-o",
                                                                     "json"), timeout=60)  # fmt: skip
            rng = random.Random(round_no)
            changed = int(size * args.change) // MIB
            commands = []
            for at in rng.sample(range(size // MIB), changed):
                commands += ["-c", f"write -P {rng.randrange(1, 255)} {at * MIB} 1M"]
            subprocess.run(["qemu-io", "-f", "raw", *commands, uri], check=True, capture_output=True, timeout=600)
            b = replica(work, name, port_b, size)
            children.append(b)
            t0 = time.monotonic()
            stale = add_replica(control, address)
            stale_wall = time.monotonic() - t0
            sent = stale["transferred"]
            print(f"round {round_no}: stale rebuild sent {sent / MIB:.1f} MiB ({100 * sent / size:.2f} %)", flush=True)
            rounds.append(
                {
                    "round": round_no,
                    "data_bytes": data,
                    "full": full,
                    "full_wall": full_wall,
                    "cp_seconds": cp_seconds,
                    "ratio": (data / full_wall) / (data / cp_seconds),
                    "stale": stale,
                    "stale_wall": stale_wall,
                    "changed_bytes": changed * MIB,
                    "stale_fraction": stale["transferred"] / size,
                }
            )
            metalhorn("engine", "rm-replica", "--control", control, address)
            b.stop()
            shutil.rmtree(work / name)
    finally:
        for child in reversed(children):
            child.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(rounds, args=args, size=size, started=started)
    return 0


def report(rounds: list[dict[str, Any]], *, args: argparse.Namespace, size: int, started: datetime.datetime) -> None:
    out_dir = ROOT / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = started.strftime("%Y-%m-%d-%H%M")
    machine = common.machine_info()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    lines = [
        f"# Rebuild benchmark {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"{machine['cpus']} cores ({machine['cpu_model']}), {machine['mem_gib']} GiB RAM, {machine['kernel']}; "
        f"load average {load} at the end. Volume {args.size_gib} GiB, {args.fill:.0%} random data in 1 MiB chunks; "
        f"stale round changes {args.change:.0%} in 1 MiB writes at random places. `bench/rebuild`.",
        "",
        "| round | data | full rebuild s | MiB/s | cp --sparse=always s | MiB/s | ratio (goal >= 0.70) | "
        "stale: sent | % of volume (goal <= 2 %) | stale s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        data_mib = r["data_bytes"] / MIB
        lines.append(
            f"| {r['round']} | {data_mib:.0f} MiB | {r['full_wall']:.1f} | {data_mib / r['full_wall']:.0f} | "
            f"{r['cp_seconds']:.1f} | {data_mib / r['cp_seconds']:.0f} | {r['ratio']:.2f} | "
            f"{r['stale']['transferred'] / MIB:.1f} MiB | {100 * r['stale_fraction']:.2f} % | {r['stale_wall']:.1f} |"
        )
    lines += [
        "",
        "Full rebuild seconds are wall time of `metalhorn engine add-replica --wait` (snapshot, copy, finish; it "
        "polls every 0.5 s); cp includes `sync -f` of the copy. Stale bytes are the data bytes the engine sent "
        "(its rebuild progress `transferred`).",
        "",
    ]
    md = out_dir / f"rebuild-{stamp}.md"
    md.write_text("\n".join(lines))
    (out_dir / f"rebuild-{stamp}.json").write_text(json.dumps({"machine": machine, "rounds": rounds}, indent=2))
    print("\n".join(lines))
    print(f"wrote {md}")


if __name__ == "__main__":
    sys.exit(main())
