"""Volume history end to end: 3 replica processes + engine, checked through NBD with qemu-io, fio and nbdinfo.

Snapshot/revert, purge (also under fio --verify load), clone, verify (a replica file changed with dd), online
expansion and trim, each through the real `metalhorn snapshot` / `engine expand` commands.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import harness

MiB = 1 << 20
SIZE = 64 * MiB


def run(args: list[str], *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def mh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run([*harness.METALHORN, *args], check=check, timeout=timeout)


def qemu_io(uri: str, *commands: str) -> str:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = run([*args, uri])
    text = out.stdout + out.stderr
    assert "Pattern verification failed" not in text, text
    return text


@pytest.fixture
def volume(tmp_path: pathlib.Path) -> Iterator[harness.LocalVolume]:
    with harness.local_volume(tmp_path / "vol", size=SIZE) as vol:
        yield vol


def snapshots(volume: harness.LocalVolume) -> dict[str, dict[str, Any]]:
    out = mh("snapshot", "ls", volume.name, "--control", volume.control, "-o", "json")
    return {entry["name"]: entry for entry in json.loads(out.stdout)["snapshots"]}


def restart_engine(volume: harness.LocalVolume, *, maintenance: bool) -> None:
    """Stop the engine and start it again, with or without its NBD frontend."""
    assert volume.engine is not None
    volume.engine.stop()
    if not maintenance:
        volume.start_engine()
        return
    ctl = volume.root / "engine.ctl"
    ctl.unlink(missing_ok=True)
    args = [*harness.METALHORN, "engine", "serve", volume.name, "--size", str(volume.size), "--frontend", "none"]
    for port in volume.replica_ports:
        args += ["--replica", f"tcp://127.0.0.1:{port}"]
    proc = harness.Proc("engine-maintenance", [*args, "--control", volume.control], volume.root / "engine.log")
    proc.start()
    volume.engine = proc
    harness.wait_until(lambda: ctl.exists() or not proc.alive, timeout=20, what="maintenance engine control socket")
    assert proc.alive, proc.tail()


def test_snapshot_then_revert_offline_reads_the_snapshot(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0xaa 0 1M", "write -P 0xa1 8M 64k")
    name = mh("snapshot", "create", volume.name, "s1", "--control", volume.control, "--label", "app=db").stdout.strip()
    assert name == "s1"
    qemu_io(volume.uri, "write -P 0xbb 0 1M", "write -P 0xb2 16M 64k")
    tree = snapshots(volume)
    assert tree["s1"]["user_created"] and tree["s1"]["labels"] == {"app": "db"}
    assert tree["s1"]["size"] >= MiB

    refused = mh("snapshot", "revert", volume.name, "s1", "--control", volume.control, check=False)
    assert refused.returncode == 1
    assert "offline" in refused.stderr and "--frontend none" in refused.stderr

    restart_engine(volume, maintenance=True)
    mh("snapshot", "revert", volume.name, "s1", "--control", volume.control)
    restart_engine(volume, maintenance=False)
    qemu_io(volume.uri, "read -P 0xaa 0 1M", "read -P 0xa1 8M 64k", "read -P 0 16M 64k")
    assert volume.replica_modes() == ["RW", "RW", "RW"]


def test_purge_keeps_visible_data(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x11 0 4M")
    mh("snapshot", "create", volume.name, "a", "--control", volume.control)
    qemu_io(volume.uri, "write -P 0x22 1M 1M")
    mh("snapshot", "create", volume.name, "b", "--control", volume.control)
    qemu_io(volume.uri, "write -P 0x33 2M 512k")
    mh("snapshot", "rm", volume.name, "a", "--control", volume.control)
    mh("snapshot", "rm", volume.name, "b", "--control", volume.control)
    assert snapshots(volume)["a"]["removed"]
    out = mh("snapshot", "purge", volume.name, "--control", volume.control)
    assert "purged volume-snap-b.img" in out.stdout and "purged volume-snap-a.img" in out.stdout
    assert set(snapshots(volume)) == {next(iter(snapshots(volume)))}  # only the head is left
    qemu_io(
        volume.uri,
        "read -P 0x11 0 1M",
        "read -P 0x22 1M 1M",
        "read -P 0x33 2M 512k",
        "read -P 0x11 2560k 1536k",
    )
    for index in range(3):
        report = volume.inspect(index)
        assert len(report["chain"]) == 1


def test_purge_under_fio_verify_loses_nothing(volume: harness.LocalVolume) -> None:
    fio = subprocess.Popen(
        [
            "fio",
            "--name=purge",
            "--ioengine=nbd",
            f"--uri={volume.uri}",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=48M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--randrepeat=0",
            "--verify_state_save=0",  # no local-*-verify.state file in the working directory
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    purges = 0
    try:
        for round_ in range(20):
            if fio.poll() is not None:
                break
            mh("snapshot", "create", volume.name, f"r{round_}", "--control", volume.control)
            time.sleep(0.2)
            mh("snapshot", "rm", volume.name, f"r{round_}", "--control", volume.control)
            mh("snapshot", "purge", volume.name, "--control", volume.control)
            purges += 1
        output, _ = fio.communicate(timeout=300)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait(timeout=10)
    assert fio.returncode == 0, output
    assert purges >= 1, "fio finished before any purge ran; the test proved nothing"
    assert volume.replica_modes() == ["RW", "RW", "RW"]
    sums = {volume.inspect(i)["checksum"] for i in range(3)}
    assert len(sums) == 1


def test_clone_reads_the_snapshot(volume: harness.LocalVolume, tmp_path: pathlib.Path) -> None:
    qemu_io(volume.uri, "write -P 0x5a 0 2M", "write -P 0x5b 40M 1M")
    mh("snapshot", "create", volume.name, "gold", "--control", volume.control)
    qemu_io(volume.uri, "write -P 0x99 0 2M")
    root = tmp_path / "clone"
    targets = [str(root / f"replica-{i}") for i in range(3)]
    mh("snapshot", "clone", volume.name, "gold", "--control", volume.control, *(f"--to={t}" for t in targets))
    with harness.local_volume(root, name="copy", size=SIZE) as copy:
        qemu_io(copy.uri, "read -P 0x5a 0 2M", "read -P 0x5b 40M 1M", "read -P 0 2M 1M")
        tree = snapshots(copy)
        assert tree["gold"]["labels"] == {"metalhorn.io/cloned-from": "vol/gold"}
    qemu_io(volume.uri, "read -P 0x99 0 2M")  # the source is untouched


def test_verify_finds_a_replica_file_changed_with_dd(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x42 0 3M")
    mh("snapshot", "create", volume.name, "v1", "--control", volume.control)
    checksum_files = [volume.replica_dir(i) / "volume-snap-v1.img.checksum" for i in range(3)]
    harness.wait_until(lambda: all(f.exists() for f in checksum_files), timeout=30, what="snapshot checksums")
    ok = mh("snapshot", "verify", volume.name, "--control", volume.control, "-o", "json")
    assert json.loads(ok.stdout)["corrupt"] == {}

    target = volume.replica_dir(1) / "volume-snap-v1.img"
    run(["dd", "if=/dev/urandom", f"of={target}", "bs=4k", "count=1", "seek=300", "conv=notrunc", "status=none"])
    bad = mh("snapshot", "verify", volume.name, "--control", volume.control, "-o", "json", check=False)
    assert bad.returncode == 1, bad.stderr
    result = json.loads(bad.stdout)
    address = f"tcp://127.0.0.1:{volume.replica_ports[1]}"
    assert list(result["corrupt"]) == [address]
    assert "changed behind our back" in result["corrupt"][address]
    assert result["set_err"] == [address]
    assert "block" in result["corrupt"][address]
    qemu_io(volume.uri, "read -P 0x42 0 3M")  # the volume keeps serving good data
    # ... and the replica is rebuilt from a healthy one, after which verify finds nothing
    harness.wait_until(lambda: volume.replica_modes() == ["RW", "RW", "RW"], timeout=60, what="rebuild after verify")
    again = mh("snapshot", "verify", volume.name, "--control", volume.control, "-o", "json")
    assert json.loads(again.stdout)["corrupt"] == {}


def test_expand_online_and_refuse_shrink(volume: harness.LocalVolume) -> None:
    qemu_io(volume.uri, "write -P 0x6c 0 1M", f"write -P 0x6d {SIZE - MiB} 1M")
    shrink = mh("engine", "expand", "--control", volume.control, str(SIZE // 2), check=False)
    assert shrink.returncode == 1 and "cannot shrink" in shrink.stderr
    mh("engine", "expand", "--control", volume.control, str(2 * SIZE))
    info = json.loads(run(["nbdinfo", "--json", volume.uri]).stdout)
    assert info["exports"][0]["export-size"] == 2 * SIZE
    qemu_io(
        volume.uri,
        "read -P 0x6c 0 1M",
        f"read -P 0x6d {SIZE - MiB} 1M",
        f"read -P 0 {SIZE} 1M",
        f"write -P 0x6e {2 * SIZE - MiB} 1M",
        f"read -P 0x6e {2 * SIZE - MiB} 1M",
    )
    for index in range(3):
        assert volume.inspect(index)["size"] == 2 * SIZE


def test_trim_reclaims_allocated_bytes(volume: harness.LocalVolume) -> None:
    def head_allocated(index: int) -> int:
        layers = volume.inspect(index)["layers"]
        return int(layers[-1]["allocated"])

    qemu_io(volume.uri, "write -P 0x7f 0 16M")
    before = [head_allocated(i) for i in range(3)]
    assert all(b >= 16 * MiB for b in before), before
    qemu_io(volume.uri, "discard 0 16M", "read -P 0 0 16M")
    after = [head_allocated(i) for i in range(3)]
    for b, a in zip(before, after, strict=True):
        assert b - a >= 15 * MiB, (before, after)
    assert os.path.exists(volume.replica_dir(0) / "volume.meta")
