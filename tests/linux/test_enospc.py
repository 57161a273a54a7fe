"""ENOSPC from real (small, loop-mounted ext4) filesystems under the replicas.

One replica full: it goes ERR and the volume keeps serving. Every replica full: the NBD client gets ENOSPC, no
acknowledged write is corrupted, and once space is freed (filler files deleted or truncated) writes
succeed again and every replica agrees.
"""

from __future__ import annotations

import pathlib
import subprocess

from tests.integration import acked, harness
from tests.linux import faults

SIZE = 16 << 20
FS_SIZE = 64 << 20


def write_for(volume: faults.FaultVolume, record: pathlib.Path, *, seconds: float, seed: int, start_seq: int,
              reconnect: bool = False) -> int:  # fmt: skip
    writer = faults.start_writer(volume, record, seconds=seconds, seed=seed, start_seq=start_seq, reconnect=reconnect)
    try:
        return writer.wait(timeout=seconds + 60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)


def heal(volume: faults.FaultVolume) -> None:
    harness.wait_until(volume.healthy, timeout=90, what="every replica RW again", interval=0.2)


def test_one_full_replica_goes_err_and_the_volume_keeps_serving(tmp_path: pathlib.Path) -> None:
    record = tmp_path / "acked.record"
    with faults.fault_volume(tmp_path, size=SIZE, fs_size=FS_SIZE) as volume:
        assert write_for(volume, record, seconds=1, seed=1, start_seq=1) == 0
        volume.filesystems[1].fill()
        try:
            # Fresh blocks need space on replica 1 only; the writer must not notice.
            assert write_for(volume, record, seconds=3, seed=2, start_seq=1_000_000) == 0
            info = volume.request({"op": "info"})
            modes = [r["mode"] for r in info["replicas"]]
            reasons = [r["reason"] for r in info["replicas"]]
            assert modes[1] in ("ERR", "WO"), info  # WO: auto-rebuild is already trying (and will fail for now)
            assert modes[0] == modes[2] == "RW", info
            assert any("NO_SPACE" in reason for reason in reasons) or modes[1] == "WO", info
        finally:
            volume.filesystems[1].free()
        result = acked.read_record(record)
        assert result.errors == [] and result.ack_count > 100
        heal(volume)
        assert faults.check_all(volume, result, tmp_path / "export.img") == []


def test_every_replica_full_gives_enospc_then_recovers(tmp_path: pathlib.Path) -> None:
    record = tmp_path / "acked.record"
    with faults.fault_volume(tmp_path, size=SIZE, fs_size=FS_SIZE) as volume:
        assert write_for(volume, record, seconds=1, seed=1, start_seq=1) == 0
        for fs in volume.filesystems:
            fs.fill()
        # The writer stops at its first error (no --reconnect): that error must be ENOSPC.
        code = write_for(volume, record, seconds=20, seed=2, start_seq=1_000_000)
        result = acked.read_record(record)
        assert code == 3, f"the writer should have failed; record errors {result.errors}"
        assert len(result.errors) == 1 and "ENOSPC" in result.errors[0][1], result.errors
        info = volume.request({"op": "info"})
        assert any(r["mode"] == "RW" for r in info["replicas"]), info  # still served: nothing is lost
        # Reads still work and every acknowledged write is intact through the export.
        assert acked.lost_in(result, faults.read_export(volume, tmp_path / "export.img")) == []
        # Free space: delete two fillers, shrink the third to leave 8 MiB free (online resize2fs is refused here).
        volume.filesystems[0].free()
        volume.filesystems[1].free()
        third = volume.filesystems[2]
        third.free(keep=third.filler.stat().st_size - (8 << 20))
        heal(volume)
        # Writes succeed again (retrying the volume's own recovery: no --reconnect needed, no error allowed).
        assert write_for(volume, record, seconds=2, seed=3, start_seq=2_000_000) == 0
        result = acked.read_record(record)
        assert len(result.errors) == 1, result.errors  # only the ENOSPC above
        heal(volume)
        assert faults.check_all(volume, result, tmp_path / "export.img") == []


def test_loop_filesystem_is_cleaned_up_after_a_failure(tmp_path: pathlib.Path) -> None:
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    device = ""
    try:
        with faults.loop_filesystem(image, mnt, size=FS_SIZE) as fs:
            device = fs.device
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert device
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert f"{device}:" not in attached
    assert not mnt.is_mount()
