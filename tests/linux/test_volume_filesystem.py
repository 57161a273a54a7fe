"""A metalhorn volume as a real block device: mkfs.ext4, 1000 files, fsck clean, remount, every file intact."""

from __future__ import annotations

import hashlib
import pathlib
import random
import subprocess

from tests.integration import harness
from tests.linux import blockdev


def test_ext4_on_a_three_replica_volume(tmp_path: pathlib.Path) -> None:
    rng = random.Random(3)
    with (
        harness.local_volume(tmp_path / "vol", size=512 << 20) as volume,
        blockdev.nbd_loop_device(volume.uri, tmp_path) as device,
    ):
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, timeout=300)
        expected: dict[str, str] = {}
        with blockdev.mounted(device, tmp_path / "mnt") as mnt:
            for index in range(1000):
                data = rng.randbytes(rng.randrange(1, 64 * 1024))
                name = f"dir{index % 10}/file{index}"
                path = mnt / name
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
                expected[name] = hashlib.sha256(data).hexdigest()
            subprocess.run(["sync"], check=True, timeout=120)
        fsck = subprocess.run(["fsck.ext4", "-fn", device], check=False, capture_output=True, text=True, timeout=300)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        with blockdev.mounted(device, tmp_path / "mnt") as mnt:
            for name, digest in expected.items():
                assert hashlib.sha256((mnt / name).read_bytes()).hexdigest() == digest, name
        assert volume.replica_modes() == ["RW", "RW", "RW"]
