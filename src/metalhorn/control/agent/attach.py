"""Attached volumes as Linux block devices: `/dev/metalhorn/<volume>` -> /dev/loopN.

Without a kernel nbd module the portable way is `nbdfuse DIR nbd://...` (the export as the file DIR/nbd) plus
`losetup` on that file. Only possible as root with nbdfuse, losetup and /dev/fuse; otherwise volumes are used
through their NBD endpoint alone and `available()` says why. Everything lives under <data-path>/run/fuse/<volume>,
so a restarted agent can find and undo what a killed one left (`clean_stale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import subprocess

from metalhorn.common import logs

log = logging.getLogger(__name__)

DEV_DIR = pathlib.Path("/dev/metalhorn")
RETRY_AFTER = 10.0


def available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "block devices need root (loop devices and FUSE)"
    missing = [tool for tool in ("nbdfuse", "losetup", "fusermount3") if shutil.which(tool) is None]
    if missing:
        return False, f"block devices need {', '.join(missing)} (apt-get install nbdfuse fuse3 util-linux)"
    if not os.path.exists("/dev/fuse"):
        return False, "block devices need /dev/fuse (modprobe fuse)"
    return True, ""


@dataclasses.dataclass
class _Attached:
    endpoint: str
    fuse: subprocess.Popen[bytes] | None = None
    loop: str = ""


async def _run(*args: str, limit: float = 30.0) -> str:
    def call() -> str:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=limit, check=False)
        if done.returncode != 0:
            raise OSError(f"{' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
        return done.stdout.strip()

    return await asyncio.to_thread(call)


class BlockDevices:
    def __init__(self, *, run_dir: pathlib.Path, dev_dir: pathlib.Path = DEV_DIR) -> None:
        self._fuse_root = run_dir / "fuse"
        self._dev_dir = dev_dir
        self._attached: dict[str, _Attached] = {}
        self._failed_at: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    def device(self, volume: str) -> str:
        attached = self._attached.get(volume)
        return str(self._dev_dir / volume) if attached is not None and attached.loop else ""

    async def clean_stale(self) -> None:
        """Undo block devices a previous agent of this node left behind (it was killed)."""
        if not self._fuse_root.is_dir():
            return
        for directory in sorted(self._fuse_root.iterdir()):
            await self._teardown(directory.name, _Attached(endpoint=""))

    async def converge(self, wanted: dict[str, str]) -> None:
        """wanted: volume -> NBD endpoint. Set up what is missing, tear down what is no longer wanted."""
        loop = asyncio.get_running_loop()
        for volume in list(self._attached):
            attached = self._attached[volume]
            broken = attached.fuse is not None and attached.fuse.poll() is not None
            if wanted.get(volume) != attached.endpoint or broken:
                if broken:
                    log.warning("nbdfuse exited, setting the block device up again %s", logs.kv(volume=volume))
                await self._teardown(volume, attached)
                del self._attached[volume]
        for volume, endpoint in wanted.items():
            if volume in self._attached:
                continue
            if loop.time() - self._failed_at.get(volume, -RETRY_AFTER) < RETRY_AFTER:
                continue
            try:
                self._attached[volume] = await self._setup(volume, endpoint)
                self.errors.pop(volume, None)
            except OSError as exc:
                self._failed_at[volume] = loop.time()
                self.errors[volume] = str(exc)
                log.error("cannot make the block device %s", logs.kv(volume=volume, error=exc))

    async def _setup(self, volume: str, endpoint: str) -> _Attached:
        directory = self._fuse_root / volume
        directory.mkdir(parents=True, exist_ok=True)
        pidfile = directory.with_suffix(".pid")
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        logfile = directory.with_suffix(".log")
        with logfile.open("ab") as out:
            fuse = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; it runs beside the agent
                ["nbdfuse", "-P", str(pidfile), str(directory), endpoint],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        attached = _Attached(endpoint=endpoint, fuse=fuse)
        try:
            for _ in range(300):  # 30 s
                if pidfile.exists() or fuse.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if fuse.poll() is not None or not pidfile.exists():
                raise OSError(f"nbdfuse did not serve {endpoint}; see {logfile}")
            attached.loop = await _run("losetup", "--find", "--show", "--direct-io=off", str(directory / "nbd"))
            self._dev_dir.mkdir(parents=True, exist_ok=True)
            link = self._dev_dir / volume
            tmp = self._dev_dir / f".{volume}.tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(attached.loop)
            os.replace(tmp, link)
        except BaseException:
            await self._teardown(volume, attached)
            raise
        log.info("block device ready %s", logs.kv(volume=volume, device=link, loop=attached.loop, endpoint=endpoint))
        return attached

    async def _teardown(self, volume: str, attached: _Attached) -> None:
        directory = self._fuse_root / volume
        link = self._dev_dir / volume
        with contextlib.suppress(OSError):
            if link.is_symlink() and (not attached.loop or os.readlink(link) == attached.loop):
                link.unlink()
        loops = [attached.loop] if attached.loop else []
        if not loops and (directory / "nbd").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                listing = await _run("losetup", "--associated", str(directory / "nbd"), "--output", "NAME", "-n")
                loops = [line.split()[0] for line in listing.splitlines() if line.strip()]
        for device in loops:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                await _run("losetup", "--detach", device)  # busy (mounted): the kernel detaches it when released
        if await asyncio.to_thread(os.path.ismount, directory):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                await _run("fusermount3", "-u", "-z", str(directory))
        fuse = attached.fuse
        if fuse is not None:
            for _ in range(100):  # 10 s
                if fuse.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if fuse.poll() is None:
                fuse.kill()
                await asyncio.to_thread(fuse.wait, 10)
        log.info("block device removed %s", logs.kv(volume=volume))
