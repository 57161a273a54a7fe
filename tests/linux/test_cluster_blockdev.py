"""Issue 5 acceptance as root with nbdfuse: `volume attach` makes /dev/metalhorn/<volume>; mkfs + mount work."""

from __future__ import annotations

import os
import pathlib
import subprocess

from tests.integration import cluster as cluster_mod
from tests.linux import blockdev


def test_attach_gives_a_block_device_with_a_filesystem(tmp_path: pathlib.Path) -> None:
    with cluster_mod.running_cluster(tmp_path / "data", nodes=3, block_devices="auto") as cluster:
        cluster.cli("volume", "create", "v1", "--size", "256M", "--replicas", "3")
        cluster.wait_volume("v1", lambda v: v["status"].get("robustness") == "healthy", timeout=120, what="healthy")
        cluster.cli("volume", "attach", "v1")
        volume = cluster.wait_volume(
            "v1", lambda v: v["status"].get("block_device"), timeout=120, what="/dev/metalhorn/v1"
        )
        device = volume["status"]["block_device"]
        assert device == "/dev/metalhorn/v1"
        assert os.path.realpath(device).startswith("/dev/loop")
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, timeout=120)
        with blockdev.mounted(device, tmp_path / "mnt") as mnt:
            (mnt / "hello.txt").write_text("metalhorn\n")
            payload = os.urandom(4 << 20)
            (mnt / "blob").write_bytes(payload)
            os.sync()
        with blockdev.mounted(device, tmp_path / "mnt") as mnt:
            assert (mnt / "hello.txt").read_text() == "metalhorn\n"
            assert (mnt / "blob").read_bytes() == payload
        subprocess.run(["fsck.ext4", "-n", device], check=True, timeout=120, capture_output=True)
        cluster.cli("volume", "detach", "v1")
        cluster.wait_volume("v1", lambda v: not v["status"].get("block_device"), timeout=120, what="detached")
        assert not os.path.lexists(device)
