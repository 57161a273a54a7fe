"""The node agent: sync with the manager every second, converge this node's instances to the answer.

One loop: report (node address, disks, instance states) -> `POST /v1/agents/{node}/sync` -> the records desired
on this node -> InstanceSpecs -> InstanceManager.set_desired -> step. Running engines have their replica set
reconciled through their control socket (add_replica / rm_replica); attached volumes get a block device when the
agent may make one (attach.py). The manager being away changes nothing that runs: the agent keeps the last
wish and keeps syncing -- the data path never depends on the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors, logs
from metalhorn.control import client as client_mod
from metalhorn.control.agent import attach, disks, instances, processes, specs
from metalhorn.storage.engine import control

log = logging.getLogger(__name__)

FORGET_AFTER = 3  # answers in a row without a known replica before its directory is deleted


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSettings:
    node: str
    data_path: pathlib.Path
    listen_ip: str
    zone: str = ""
    tags: tuple[str, ...] = ()
    agent_url: str = ""
    sync_interval: float = 1.0
    node_refresh_interval: float = 5.0
    block_devices: bool = False


@dataclasses.dataclass
class _EngineView:
    volume: str
    desired: list[str] = dataclasses.field(default_factory=list)  # replica addresses the manager wants
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # the engine's last `info` answer
    error: str = ""
    task: asyncio.Task[None] | None = None


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        api: client_mod.AsyncClient,
        launcher: instances.Launcher,
        clock: clock_mod.Clock,
        policy: instances.RestartPolicy | None = None,
        command: Sequence[str] = processes.metalhorn_command(),
        block_devices: attach.BlockDevices | None = None,
    ) -> None:
        self.settings = settings
        self._api = api
        self._clock = clock
        self._command = tuple(command)
        self._record = processes.InstanceRecord(settings.data_path / "run" / "instances.json")
        self._ports = processes.PortBook(settings.listen_ip)
        self.instances = instances.InstanceManager(
            launcher=launcher, clock=clock, policy=policy, on_change=self._save_record
        )
        self._block = block_devices
        self._spec_disks: dict[str, Any] = {}
        self._spec_errors: dict[str, str] = {}
        self._engines: dict[str, _EngineView] = {}
        self._replica_dirs: dict[str, pathlib.Path] = {}  # every replica this agent was told about, and where
        self._absent: dict[str, int] = {}
        self._last_node_refresh = -1e18
        self.synced = False
        self.sync_errors = 0
        self.last_error = ""

    # -- life cycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Make the directories, end the instances a previous agent left behind, take back their ports."""
        for sub in ("replicas", "run", "logs"):
            (self.settings.data_path / sub).mkdir(parents=True, exist_ok=True)
        pids, ports = self._record.load()
        await asyncio.to_thread(processes.end_orphans, pids)
        self._ports = processes.PortBook(self.settings.listen_ip, ports)
        self._ports.refresh_taken()
        self._save_record({})
        if self._block is not None:
            await self._block.clean_stale()

    async def run(self, stop: asyncio.Event, *, tick: float = 0.2) -> None:
        next_sync = self._clock.monotonic()
        while not stop.is_set():
            now = self._clock.monotonic()
            if now >= next_sync:
                next_sync = now + self.settings.sync_interval
                await self.sync_once()
            await self.instances.step()
            self._reconcile_engines()
            if self._block is not None:
                await self._block.converge(self._attached())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    async def shutdown(self, *, grace: float = 30.0) -> None:
        """Block devices first, then engines (they flush to the replicas), then replicas."""
        if self._block is not None:
            await self._block.converge({})
        for view in self._engines.values():
            if view.task is not None:
                view.task.cancel()
        replicas_only = {n: s for n, s in self.instances.desired.items() if s.kind == "replica"}
        self.instances.set_desired(replicas_only)
        await self._step_until(lambda: not any(self.instances.ready(n) for n in self._engine_names()), grace)
        await self._step_until(lambda: not self._engine_pids(), grace)
        self.instances.stop_all()
        await self._step_until(lambda: self.instances.alive == 0, grace)

    def _engine_names(self) -> list[str]:
        return list(self._engines)

    def _engine_pids(self) -> list[int]:
        return [pid for name, pid in self.instances.pids().items() if name in self._engines]

    async def _step_until(self, done: Any, grace: float) -> None:
        deadline = self._clock.monotonic() + grace
        while not done() and self._clock.monotonic() < deadline:
            await self.instances.step()
            await asyncio.sleep(0.05)

    # -- sync -----------------------------------------------------------------------------------------------------
    async def sync_once(self) -> None:
        await self._refresh_node()
        try:
            answer = await self._api.sync_agent(self.settings.node, self.report())
        except errors.MetalhornError as exc:
            self.sync_errors += 1
            if exc.message != self.last_error:
                log.warning(
                    "sync failed, keeping the last wish %s", logs.kv(node=self.settings.node, error=exc.message)
                )
            self.last_error = exc.message
            return
        if self.last_error:
            log.info("sync works again %s", logs.kv(node=self.settings.node))
        self.last_error = ""
        self.synced = True
        self.apply(answer)

    async def _refresh_node(self) -> None:
        now = self._clock.monotonic()
        if now - self._last_node_refresh < self.settings.node_refresh_interval:
            return
        self._last_node_refresh = now
        try:
            node = await self._api.get_node(self.settings.node)
        except errors.NotFound:
            return  # registered by the first sync
        except errors.MetalhornError as exc:
            log.debug("cannot read node record %s", logs.kv(node=self.settings.node, error=exc.message))
            return
        spec = node.get("spec") if isinstance(node.get("spec"), Mapping) else {}
        disks_spec = spec.get("disks") if isinstance(spec, Mapping) else None
        self._spec_disks = dict(disks_spec) if isinstance(disks_spec, Mapping) else {}

    def report(self) -> dict[str, Any]:
        settings = self.settings
        status = self.instances.status()
        desired = self.instances.desired
        replicas: dict[str, Any] = {}
        engines: dict[str, Any] = {}
        for name, spec in desired.items():
            state = status.get(name)
            base = {
                "state": state.state.value if state else instances.State.PENDING.value,
                "pid": state.pid if state else None,
                "error": self._spec_errors.get(name) or (state.error if state else ""),
            }
            if spec.kind == "replica":
                replicas[name] = {**base, "address": f"tcp://{spec.listen}"}
            else:
                view = self._engines.get(name)
                volume = view.volume if view else ""
                running = state is not None and state.state is instances.State.RUNNING
                engines[name] = {
                    **base,
                    "endpoint": specs.endpoint(spec, volume) if running else "",
                    "block_device": self._block.device(volume) if (self._block and running) else "",
                    "replicas": (view.info.get("replicas") or []) if view and running else [],
                    "rebuild": specs.rebuild_progress(view.info) if view and running else None,
                    "error": base["error"] or (view.error if view else ""),
                }
        for name, message in self._spec_errors.items():
            if name not in desired:
                replicas.setdefault(name, {"state": "failed", "address": "", "pid": None, "error": message})
        return {
            "address": settings.listen_ip,
            "agent_url": settings.agent_url,
            "zone": settings.zone,
            "tags": list(settings.tags),
            "disks": disks.report(settings.data_path, self._spec_disks, create=self._spec_disks),
            "replicas": replicas,
            "engines": engines,
        }

    def apply(self, answer: Mapping[str, Any]) -> None:
        """Turn the sync answer into the instance wish."""
        settings = self.settings
        node = answer.get("node")
        if isinstance(node, Mapping) and isinstance(node.get("spec"), Mapping):
            disks_spec = node["spec"].get("disks")
            self._spec_disks = dict(disks_spec) if isinstance(disks_spec, Mapping) else {}
            self._last_node_refresh = self._clock.monotonic()  # the answer carries the node: no extra GET
        wanted: dict[str, instances.InstanceSpec] = {}
        self._spec_errors = {}
        seen_replicas: set[str] = set()
        for record in _records(answer, "replicas"):
            name = str(record.get("name"))
            try:
                seen_replicas.add(specs.check_name(name, kind="replica"))
                directory = specs.replica_dir(record, data_path=settings.data_path, disks=self._spec_disks)
                self._replica_dirs[name] = directory
                wanted[name] = specs.replica_spec(
                    record,
                    data_path=settings.data_path,
                    disks=self._spec_disks,
                    host=settings.listen_ip,
                    port=self._ports.port(name),
                    command=self._command,
                )
            except errors.MetalhornError as exc:
                self._spec_errors[name] = exc.message
        engines: dict[str, _EngineView] = {}
        for record in _records(answer, "engines"):
            name = str(record.get("name"))
            try:
                spec = specs.engine_spec(
                    record,
                    data_path=settings.data_path,
                    host=settings.listen_ip,
                    port=self._ports.port(name),
                    command=self._command,
                )
            except errors.MetalhornError as exc:
                self._spec_errors[name] = exc.message
                continue
            wanted[name] = spec
            view = self._engines.get(name) or _EngineView(volume=str(record["spec"]["volume"]))
            view.desired = specs.replica_addresses(record)
            engines[name] = view
        for name, view in self._engines.items():
            if name not in engines and view.task is not None:
                view.task.cancel()
        self._engines = engines
        self.instances.set_desired(wanted)
        self._ports.keep_only(set(wanted) | set(self.instances.pids()))
        self._forget_deleted(seen_replicas)
        self._save_record(self.instances.pids())

    def _forget_deleted(self, seen: set[str]) -> None:
        """Delete the directory of a replica this agent was told about once and that the manager has since
        dropped (absent from FORGET_AFTER answers in a row, process gone). Directories this agent never heard
        of are left alone: an empty or new store must not wipe a node's data."""
        running = self.instances.pids()
        for name in list(self._replica_dirs):
            if name in seen:
                self._absent.pop(name, None)
                continue
            self._absent[name] = self._absent.get(name, 0) + 1
            if self._absent[name] < FORGET_AFTER or name in running:
                continue
            directory = self._replica_dirs.pop(name)
            self._absent.pop(name, None)
            if directory.name == name and directory.parent.name == "replicas" and directory.is_dir():
                log.info("deleting replica directory %s", logs.kv(replica=name, dir=directory))
                shutil.rmtree(directory, ignore_errors=True)

    def _save_record(self, pids: Mapping[str, int]) -> None:
        try:
            self._record.save(pids=pids, ports=self._ports.as_dict())
        except OSError as exc:
            log.error("cannot write the instance record %s", logs.kv(path=self._record.path, error=exc))

    # -- engines ----------------------------------------------------------------------------------------------------
    def _reconcile_engines(self) -> None:
        for name, view in self._engines.items():
            if view.task is not None and not view.task.done():
                continue
            if not self.instances.ready(name):
                view.info = {}
                continue
            spec = self.instances.desired.get(name)
            if spec is None:
                continue
            view.task = asyncio.create_task(self._reconcile_engine(name, view), name=f"reconcile-{name}")

    async def _reconcile_engine(self, name: str, view: _EngineView) -> None:
        socket = f"unix:{specs.control_path(self.settings.data_path, name)}"
        desired = list(view.desired)
        try:
            info = await control.request(socket, {"op": "info"}, timeout=5.0)
            view.info = info
            changes = specs.replica_changes(info.get("replicas") or [], desired, rebuilding=specs.rebuilding(info))
            for address in changes.remove:
                log.info("removing replica from engine %s", logs.kv(engine=name, replica=address))
                await control.request(socket, {"op": "rm_replica", "address": address}, timeout=30.0)
            for address in changes.add:
                log.info("adding replica to engine %s", logs.kv(engine=name, replica=address))
                await control.request(socket, {"op": "add_replica", "address": address}, timeout=30.0)
            view.error = ""
        except errors.MetalhornError as exc:
            if exc.message != view.error:
                log.warning("engine reconcile failed %s", logs.kv(engine=name, error=exc.message))
            view.error = exc.message
        await asyncio.sleep(1.0)  # at most one reconcile pass per engine and second

    # -- what /metrics reads (control/agent/metrics.py) ----------------------------------------------------------
    @property
    def node(self) -> str:
        return self.settings.node

    def instance_states(self) -> list[tuple[str, str]]:
        desired = self.instances.desired
        return [
            (desired[name].kind if name in desired else "unknown", status.state.value)
            for name, status in self.instances.status().items()
        ]

    def engine_infos(self) -> dict[str, dict[str, Any]]:
        """volume -> the last `info` of its engine running here (empty while the engine is not running)."""
        return {view.volume: view.info for view in self._engines.values() if view.info}

    def _attached(self) -> dict[str, str]:
        """volume -> NBD endpoint of every engine running here."""
        result = {}
        for name, view in self._engines.items():
            spec = self.instances.desired.get(name)
            if spec is not None and self.instances.ready(name):
                result[view.volume] = specs.endpoint(spec, view.volume)
        return result


def _records(answer: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = answer.get(key) or []
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []
