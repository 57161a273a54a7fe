"""One attached volume as a running service: Engine + NBD frontend + control endpoint + keepalive.

`metalhorn engine serve` is a thin wrapper around this: it parses flags into EngineSettings, starts the service,
waits for a signal and stops it. Stop order matters: stop taking NBD requests and let in-flight ones finish,
then flush every replica, then close the replica connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from metalhorn.common import addresses, errors, logs
from metalhorn.storage.engine import control, rebuild, snapshots
from metalhorn.storage.engine import engine as engine_mod
from metalhorn.storage.frontend import nbd
from metalhorn.storage.wire import client as wire_client

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    volume: str
    size: int
    replicas: tuple[str, ...]
    listen: addresses.Address
    control: addresses.Address | None = None
    replica_timeout: float = wire_client.DEFAULT_TIMEOUT
    frontend: str = "nbd"
    auto_rebuild: bool = True  # rebuild an ERR replica as soon as its process answers again

    def __post_init__(self) -> None:
        if not self.volume:
            raise errors.InvalidArgument("the volume name must not be empty")
        if self.frontend not in ("nbd", "none"):  # none: maintenance mode (e.g. for snapshot revert)
            raise errors.NotSupported(f"frontend {self.frontend!r} is not supported; use nbd or none")
        if not self.replicas:
            raise errors.InvalidArgument("give at least one --replica")
        if self.replica_timeout <= 0:
            raise errors.InvalidArgument(f"--replica-timeout must be positive, got {self.replica_timeout}")
        for replica in self.replicas:
            addresses.parse_address(replica, what="replica address")


class EngineService:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.engine: engine_mod.Engine | None = None
        self.frontend: nbd.NbdServer | None = None
        self.control: control.ControlServer | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.rebuilder: rebuild.Rebuilder | None = None
        self._auto_rebuild: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        self.engine = await engine_mod.Engine.open(
            volume=settings.volume, size=settings.size, addresses=settings.replicas, timeout=settings.replica_timeout
        )
        self.rebuilder = rebuild.Rebuilder(self.engine, timeout=settings.replica_timeout)
        try:
            if settings.control is not None:
                history = snapshots.History(
                    self.engine, frontend_up=lambda: self.frontend is not None, on_corrupt=self._rebuild_corrupt
                )
                rebuilds = {"add_replica": self._add_replica, "rm_replica": self._rm_replica}
                self.control = control.ControlServer(
                    {"info": lambda _request: self._info(), **history.handlers(), **rebuilds}
                )
                await self.control.start(str(settings.control))
            if settings.frontend != "none":
                self.frontend = nbd.NbdServer(self.engine, export_name=settings.volume, description=settings.volume)
                await self.frontend.start(settings.listen)
        except BaseException:
            await self.stop()
            raise
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"keepalive-{settings.volume}")
        if settings.auto_rebuild:
            self._auto_rebuild = asyncio.create_task(self.rebuilder.auto(), name=f"auto-rebuild-{settings.volume}")

    @property
    def listening(self) -> list[str]:
        return [str(address) for address in self.frontend.addresses] if self.frontend else []

    async def stop(self, *, grace: float = 10.0) -> None:
        if self._auto_rebuild is not None:
            self._auto_rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auto_rebuild
            self._auto_rebuild = None
        if self.rebuilder is not None:
            await self.rebuilder.close()
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        if self.control is not None:
            self.control.close()
        if self.frontend is not None:
            self.frontend.close()
            try:
                await asyncio.wait_for(self.frontend.wait_closed(), grace)
            except TimeoutError:
                log.warning("%s", logs.kv(volume=self.settings.volume, event="nbd clients did not finish in time"))
        if self.engine is not None:
            try:
                await asyncio.wait_for(self.engine.flush(), grace)
            except (errors.MetalhornError, TimeoutError) as exc:
                log.warning("%s", logs.kv(volume=self.settings.volume, event="final flush failed", error=exc))
            self.engine.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.engine.wait_closed(), grace)
        if self.control is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.control.wait_closed(), grace)

    def _info(self) -> dict[str, object]:
        assert self.engine is not None
        info = self.engine.info()
        info["frontend"] = {"type": self.settings.frontend, "addresses": self.listening}
        if self.rebuilder is not None:
            info["rebuilds"] = self.rebuilder.info()
        return info

    def _rebuild_corrupt(self, address: str) -> None:
        """`snapshot verify` set `address` ERR: rebuild it from a healthy replica (unless one is under way)."""
        assert self.rebuilder is not None
        with contextlib.suppress(errors.AlreadyExists):
            self.rebuilder.start(address)

    def _add_replica(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control op add_replica {"address": ADDR}: start rebuilding it (returns at once; watch info)."""
        address = request.get("address")
        if not isinstance(address, str):
            raise errors.InvalidArgument('add_replica needs a string "address"')
        addresses.parse_address(address, what="replica address")
        assert self.rebuilder is not None
        return self.rebuilder.start(address).as_dict()

    def _rm_replica(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control op rm_replica {"address": ADDR}: drop a replica from the volume."""
        address = request.get("address")
        if not isinstance(address, str):
            raise errors.InvalidArgument('rm_replica needs a string "address"')
        assert self.engine is not None and self.rebuilder is not None
        if self.rebuilder.running(address):
            raise errors.Conflict(f"replica {address} is being rebuilt; wait for the rebuild to end")
        self.engine.remove_replica(address)
        return {"removed": address}

    async def _keep_alive(self) -> None:
        """Ping every replica now and then, so a replica that hangs while the volume is idle is noticed."""
        assert self.engine is not None
        interval = max(0.05, self.settings.replica_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.engine.ping()
            except errors.MetalhornError as exc:
                log.debug("%s", logs.kv(volume=self.settings.volume, event="keepalive failed", error=exc.message))
