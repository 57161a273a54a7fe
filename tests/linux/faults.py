"""Fault injection for a 3-replica volume: small loop-mounted filesystems, faults, rounds, and read-back checks.

Used by tests/linux/test_faults.py (20 rounds), tests/linux/test_enospc.py and bench/faults (100 rounds).

Every replica directory lives on its own small ext4 filesystem on a loop device, so a "full disk" is real ENOSPC
from the kernel. A round starts the acked writer (tests/integration/peers/acked_writer.py --reconnect), injects
one fault while it writes, undoes the fault, lets the engine heal itself (auto-rebuild brings every replica back
to RW), folds the system snapshots away (purge, so the small filesystems do not fill up with history) and then
reads every acknowledged write back through the NBD export and from every replica over the replica protocol.

Every process, loop device and mount is created here and removed here (by PID / by the device path we got),
also when something fails; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from metalhorn.common import errors
from metalhorn.storage.engine import control
from metalhorn.storage.wire import client as wire_client
from tests.integration import acked, harness

WRITER = pathlib.Path(__file__).parents[1] / "integration" / "peers" / "acked_writer.py"
FAULTS = ("kill-replica", "kill-engine", "stop-replica", "drop-connections", "full-disk")
REPLICA_TIMEOUT = 2.0  # seconds; a SIGSTOPped replica goes ERR after this
SEQ_STRIDE = 10_000_000  # sequence numbers per round in the shared record


def run(args: list[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{args} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result


# -- small filesystems ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoopFs:
    """An ext4 filesystem in a sparse image file, attached to a loop device and mounted at `mountpoint`."""

    image: pathlib.Path
    mountpoint: pathlib.Path
    device: str = ""
    mounted: bool = False

    @property
    def filler(self) -> pathlib.Path:
        return self.mountpoint / "filler"

    def free_bytes(self) -> int:
        stat = os.statvfs(self.mountpoint)
        return stat.f_bfree * stat.f_frsize  # root may use the reserved blocks too

    def fill(self) -> int:
        """Allocate every free block into a filler file (halving the request until a 4 KiB one fails)."""
        fd = os.open(self.filler, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            at = os.fstat(fd).st_size
            chunk = max(4096, self.free_bytes())
            for _ in range(200):  # bounded: each failure halves the chunk, each success moves on
                try:
                    os.posix_fallocate(fd, at, chunk)
                    at += chunk
                except OSError:
                    if chunk <= 4096:
                        break
                    chunk = max(4096, chunk // 2)
            return at
        finally:
            os.close(fd)

    def free(self, *, keep: int = 0) -> None:
        """Give the filler's blocks back: all of them, or all but the first `keep` bytes."""
        if keep:
            os.truncate(self.filler, keep)
            return
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()


@contextlib.contextmanager
def loop_filesystem(image: pathlib.Path, mountpoint: pathlib.Path, *, size: int) -> Iterator[LoopFs]:
    """Create, attach and mount; always unmount and detach what was set up, even when a step or the body fails."""
    fs = LoopFs(image=image, mountpoint=mountpoint)
    try:
        image.parent.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        with image.open("wb") as out:
            out.truncate(size)
        run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", str(image)])
        fs.device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
        run(["mount", "-t", "ext4", fs.device, str(mountpoint)])
        fs.mounted = True
        yield fs
    finally:
        if fs.mounted and run(["umount", str(mountpoint)], check=False).returncode != 0:
            run(["umount", "-l", str(mountpoint)], check=False)
        if fs.device:
            run(["losetup", "-d", fs.device], check=False)
            # The kernel detaches a loop device asynchronously after its last user is gone: wait (bounded).
            attached = pathlib.Path("/sys/block") / pathlib.Path(fs.device).name / "loop"
            for _ in range(100):
                if not attached.exists():
                    break
                time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            image.unlink()


# -- the volume ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FaultVolume(harness.LocalVolume):
    """LocalVolume whose replicas live on their own loop filesystems; the engine has a short replica timeout."""

    filesystems: list[LoopFs] = dataclasses.field(default_factory=list)
    engine_args: tuple[str, ...] = ("--replica-timeout", str(REPLICA_TIMEOUT))

    def replica_dir(self, index: int) -> pathlib.Path:
        if self.filesystems:
            return self.filesystems[index].mountpoint / "replica"
        return super().replica_dir(index)

    def start_engine(self, extra: tuple[str, ...] = ()) -> None:
        super().start_engine((*self.engine_args, *extra))

    def request(self, payload: dict[str, Any], *, timeout: float = 30) -> dict[str, Any]:
        return asyncio.run(control.request(self.control, {"volume": self.name, **payload}, timeout=timeout))

    def healthy(self) -> bool:
        """Every replica RW and no rebuild under way."""
        try:
            info = self.request({"op": "info"}, timeout=5)
        except (errors.MetalhornError, OSError):  # engine restarting or busy: not healthy yet
            return False
        modes = [r["mode"] for r in info["replicas"]]
        busy = [p for p in info.get("rebuilds", []) if p["state"] in ("starting", "copying")]
        return len(modes) == self.replica_count and set(modes) == {"RW"} and not busy

    def lost_every_replica(self) -> bool:
        """No replica is RW: the engine cannot heal itself (auto-rebuild needs a healthy source)."""
        try:
            info = self.request({"op": "info"}, timeout=5)
        except (errors.MetalhornError, OSError):
            return False
        return not any(r["mode"] == "RW" for r in info["replicas"])

    def mode(self, index: int) -> str:
        try:
            info = self.request({"op": "info"}, timeout=5)
        except (errors.MetalhornError, OSError):
            return "?"
        address = f"tcp://127.0.0.1:{self.replica_ports[index]}"
        return next((str(r["mode"]) for r in info["replicas"] if r["address"] == address), "?")


@contextlib.contextmanager
def fault_volume(root: pathlib.Path, *, size: int, fs_size: int) -> Iterator[FaultVolume]:
    """Three replicas, each on its own `fs_size` ext4 loop filesystem; everything torn down on the way out."""
    with contextlib.ExitStack() as stack:
        filesystems = [
            stack.enter_context(loop_filesystem(root / f"disk-{i}.img", root / f"mnt-{i}", size=fs_size))
            for i in range(3)
        ]
        volume = FaultVolume(root=root / "vol", size=size, filesystems=filesystems)
        try:
            volume.start()
            yield volume
        except BaseException:
            print(volume.logs(), file=sys.stderr)
            raise
        finally:
            volume.kill_all()


# -- reading back ----------------------------------------------------------------------------------------------------


def read_replica(port: int, size: int) -> bytes:
    """The whole volume as one replica holds it, read over the replica protocol (a second, read-only connection)."""

    async def read() -> bytes:
        client = await wire_client.ReplicaClient.connect(f"tcp://127.0.0.1:{port}", timeout=30)
        try:
            parts = [await client.read(at, min(4 << 20, size - at)) for at in range(0, size, 4 << 20)]
        finally:
            client.close()
            await client.wait_closed()
        return b"".join(parts)

    return asyncio.run(read())


def read_export(volume: harness.LocalVolume, image: pathlib.Path) -> bytes:
    with contextlib.suppress(FileNotFoundError):
        image.unlink()
    run(["nbdcopy", volume.uri, str(image)], timeout=60)
    data = image.read_bytes()
    image.unlink()
    return data


def check_all(volume: FaultVolume, record: acked.Record, scratch: pathlib.Path) -> list[str]:
    """Problems: acknowledged writes missing from the export or from any replica, or replicas that disagree."""
    problems = [f"export: {p}" for p in acked.lost_in(record, read_export(volume, scratch))]
    digests = {}
    for index, port in enumerate(volume.replica_ports):
        data = read_replica(port, volume.size)
        problems += [f"replica {index}: {p}" for p in acked.lost_in(record, data)]
        digests[index] = hashlib.sha256(data).hexdigest()
    if len(set(digests.values())) != 1:
        problems.append(f"replicas disagree: {digests}")
    return problems


def start_writer(
    volume: harness.LocalVolume,
    record: pathlib.Path,
    *,
    seconds: float,
    seed: int,
    start_seq: int = 1,
    reconnect: bool = True,
) -> subprocess.Popen[bytes]:
    """The acked writer over the whole volume (its output goes to writer.log next to the record)."""
    args = ["/usr/bin/python3", str(WRITER), volume.uri, str(record), "--blocks", str(volume.size // acked.BLOCK),
            "--seconds", str(seconds), "--seed", str(seed), "--start-seq", str(start_seq)]  # fmt: skip
    if reconnect:
        args.append("--reconnect")
    with (record.parent / "writer.log").open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


# -- rounds ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    seed: int
    rounds: int = 0
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    acknowledged: int = 0  # acknowledged writes over all rounds
    write_errors: int = 0  # writes the client saw fail (never acknowledged, so allowed)
    # client-visible write errors by the kind of fault of their round: only an engine kill should cause any
    write_errors_by_fault: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # Engine restarts because every replica had gone ERR at once (a host-wide stall longer than the replica
    # timeout): the restarted engine picks the newest consistent replicas, as Longhorn's auto-salvage does.
    salvages: list[str] = dataclasses.field(default_factory=list)
    checked_blocks: int = 0  # blocks whose last acknowledged write was read back (per check, from 4 sources)
    lost: list[str] = dataclasses.field(default_factory=list)
    round_seconds: list[float] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["faults"] = dict(sorted(self.faults.items()))
        out["write_errors_by_fault"] = dict(sorted(self.write_errors_by_fault.items()))
        out["lost_writes"] = len(self.lost)
        return out


class FaultRunner:
    """Randomized rounds of one fault each on a FaultVolume, with a shared acknowledged-write record."""

    def __init__(
        self,
        volume: FaultVolume,
        *,
        seed: int,
        scratch: pathlib.Path,
        write_seconds: float = 3.0,
        heal_timeout: float = 90.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.volume = volume
        self.rng = random.Random(seed)
        self.summary = Summary(seed=seed)
        self.scratch = scratch
        self.record_path = scratch / "acked.record"
        self.write_seconds = write_seconds
        self.heal_timeout = heal_timeout
        self.say = say

    def run(self, rounds: int) -> Summary:
        for number in range(1, rounds + 1):
            self.round(number)
        return self.summary

    def round(self, number: int) -> None:
        started = time.monotonic()
        kind = self.rng.choice(FAULTS)
        target = self.rng.randrange(self.volume.replica_count)
        delay = self.rng.uniform(0.3, 1.2)
        writer = self._start_writer(number)
        try:
            time.sleep(delay)
            detail = self.inject(kind, target)
        finally:
            try:
                writer.wait(timeout=self.write_seconds + 60)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait(timeout=10)
        self.heal(f"round {number} ({kind} {detail})")
        record = acked.read_record(self.record_path)
        problems = check_all(self.volume, record, self.scratch / "export.img")
        summary = self.summary
        summary.rounds = number
        summary.faults[kind] += 1
        summary.acknowledged = record.ack_count
        summary.write_errors_by_fault[kind] += len(record.errors) - summary.write_errors
        summary.write_errors = len(record.errors)
        summary.checked_blocks += len(record.acked) * 4
        summary.lost += [f"round {number} ({kind} {detail}): {p}" for p in problems]
        summary.round_seconds.append(round(time.monotonic() - started, 2))
        self.say(
            f"round {number}: {kind} {detail}; acked {record.ack_count}, client errors {len(record.errors)}, "
            f"lost {len(problems)}, {summary.round_seconds[-1]} s"
        )

    def _start_writer(self, number: int) -> subprocess.Popen[bytes]:
        return start_writer(self.volume, self.record_path, seconds=self.write_seconds,
                            seed=self.rng.randrange(1 << 30), start_seq=number * SEQ_STRIDE)  # fmt: skip

    # -- faults -----------------------------------------------------------------------------------------------

    def inject(self, kind: str, target: int) -> str:
        """Inject one fault, see it take effect (bounded), and undo it. Returns a short description."""
        volume = self.volume
        if kind == "kill-engine":
            assert volume.engine is not None
            volume.engine.kill()
            time.sleep(self.rng.uniform(0.1, 0.5))
            volume.start_engine()
            return "(restarted)"
        if kind == "kill-replica":
            volume.replicas[target].kill()
            self._wait_err(target)
            volume.start_replica(target)
        elif kind == "stop-replica":
            volume.replicas[target].signal(signal.SIGSTOP)
            try:
                self._wait_err(target, timeout=REPLICA_TIMEOUT * 10)
            finally:
                volume.replicas[target].signal(signal.SIGCONT)
        elif kind == "drop-connections":
            port = volume.replica_ports[target]
            run(["ss", "-K", "-t", "state", "established", f"( sport = :{port} or dport = :{port} )"])
            self._wait_err(target)
        elif kind == "full-disk":
            fs = volume.filesystems[target]
            # A fresh head, so every write the writer makes needs a new block on every replica.
            volume.request({"op": "snapshot.create", "name": f"fill-{time.monotonic_ns()}"})
            fs.fill()
            try:
                self._wait_err(target)
            finally:
                fs.free()
        else:
            raise ValueError(kind)
        return f"replica {target}"

    def _wait_err(self, index: int, *, timeout: float = 20) -> None:
        harness.wait_until(lambda: self.volume.mode(index) == "ERR", timeout=timeout, what=f"replica {index} ERR")

    def heal(self, label: str) -> None:
        """Wait for auto-rebuild to bring every replica back to RW, then fold system and removed snapshots away.

        Should every replica have gone ERR, restart the engine once (salvage) and record it in the summary.
        """
        volume = self.volume
        harness.wait_until(
            lambda: volume.healthy() or volume.lost_every_replica(),
            timeout=self.heal_timeout,
            what="every replica RW",
            interval=0.2,
        )
        if not volume.healthy() and volume.lost_every_replica():
            self.summary.salvages.append(label)
            self.say(f"{label}: every replica ERR, restarting the engine (salvage)")
            assert volume.engine is not None
            volume.engine.stop()
            volume.start_engine()
            harness.wait_until(volume.healthy, timeout=self.heal_timeout, what="every replica RW after salvage")
        listing = volume.request({"op": "snapshot.ls"})
        for snap in _snapshots(listing):
            if snap.get("user_created") and not snap.get("removed"):
                volume.request({"op": "snapshot.rm", "name": snap["name"]})
        volume.request({"op": "snapshot.purge"}, timeout=120)
        harness.wait_until(volume.healthy, timeout=self.heal_timeout, what="every replica RW after purge")


def _snapshots(listing: dict[str, Any]) -> list[dict[str, Any]]:
    snaps = listing.get("snapshots", listing)
    if isinstance(snaps, dict):
        return [{"name": name, **value} for name, value in snaps.items()]
    return list(snaps)
