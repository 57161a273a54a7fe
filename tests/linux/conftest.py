"""The linux tier needs root (loop devices, FUSE, mount, network namespaces)."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(autouse=True)
def _root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices, FUSE and mount: run ./scripts/test as root")
    missing = [t for t in ("nbdfuse", "losetup", "mkfs.ext4", "fsck.ext4", "fusermount3") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run ./scripts/test as root so it can apt-get them")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: load the fuse module (modprobe fuse)")
