"""A real Linux block device from an NBD export: nbdfuse exposes it as a file, losetup makes it /dev/loopN."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
from collections.abc import Iterator

from tests.integration import harness


@contextlib.contextmanager
def nbd_loop_device(uri: str, workdir: pathlib.Path) -> Iterator[str]:
    mountpoint = workdir / "fuse"
    mountpoint.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "nbdfuse.pid"
    fuse_log = workdir / "nbdfuse.log"
    with fuse_log.open("wb") as out:
        fuse = subprocess.Popen(
            ["nbdfuse", "-P", str(pidfile), str(mountpoint), uri], stdout=out, stderr=subprocess.STDOUT
        )
    loop = ""
    try:
        harness.wait_until(lambda: pidfile.exists() or fuse.poll() is not None, timeout=30, what="nbdfuse")
        assert fuse.poll() is None, f"nbdfuse exited: {fuse_log.read_text()}"
        loop = subprocess.run(
            ["losetup", "--find", "--show", "--direct-io=off", str(mountpoint / "nbd")],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        yield loop
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False, timeout=30)
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False, timeout=30, capture_output=True)
        try:
            fuse.wait(timeout=15)
        except subprocess.TimeoutExpired:
            fuse.kill()
            fuse.wait(timeout=10)


@contextlib.contextmanager
def mounted(device: str, mountpoint: pathlib.Path) -> Iterator[pathlib.Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", device, str(mountpoint)], check=True, timeout=60)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=120)
