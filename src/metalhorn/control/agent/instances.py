"""The instance manager: converge replica and engine processes to the desired set, with a restart policy.

Desired state in, diff inside: the agent hands over the whole wish (`set_desired({name: InstanceSpec})`) after
every sync, and `step()` works out what to do -- start what is missing, restart what crashed (exponential
backoff, reset once an instance stayed up), restart what changed in a way that needs a new process, stop
(SIGTERM, SIGKILL after a grace) what is no longer wanted. An instance is "running" once its listen address
accepts connections.

Processes come from a Launcher (real: processes.PopenLauncher; tests: a fake), time from a Clock, so the whole
policy is tested without processes or sleeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import pathlib
import signal
from collections.abc import Callable, Mapping
from typing import Protocol

from metalhorn.common import addresses, clock, errors, logs

log = logging.getLogger(__name__)


class State(enum.Enum):
    PENDING = "pending"  # wanted, not (yet) serving: waiting to start, starting, or backing off
    RUNNING = "running"  # process alive and its address accepts
    FAILED = "failed"  # exited unexpectedly; a restart is scheduled
    STOPPED = "stopped"  # stopped on purpose (desired "stopped")


@dataclasses.dataclass(frozen=True)
class InstanceSpec:
    name: str
    kind: str  # "replica" | "engine"
    args: tuple[str, ...]
    listen: addresses.Address  # readiness: this address accepts
    log_path: pathlib.Path
    restart_key: tuple[object, ...] = ()  # when this changes, the running process is replaced
    wait_for: tuple[addresses.Address, ...] = ()  # start only once these accept (or after start_grace)
    run: bool = True  # False: desired "stopped" -- keep the record, stop the process


class Process(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...


class Launcher(Protocol):
    def launch(self, spec: InstanceSpec) -> Process: ...

    async def accepts(self, address: addresses.Address) -> bool: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 30.0  # running this long resets the backoff
    start_timeout: float = 60.0  # alive but not accepting for this long counts as a failed start
    stop_grace: float = 15.0  # SIGTERM, then SIGKILL after this
    start_grace: float = 10.0  # how long a start waits for its wait_for addresses

    def backoff(self, failures: int) -> float:
        """Delay before restart number `failures` (1, 2, ...): initial * 2**(n-1), capped."""
        if failures <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_initial * 2 ** min(failures - 1, 30)))


@dataclasses.dataclass(frozen=True)
class InstanceStatus:
    state: State
    pid: int | None
    error: str


@dataclasses.dataclass(eq=False)
class _Instance:
    spec: InstanceSpec
    process: Process | None = None
    ready: bool = False
    started_at: float = 0.0
    wanted_since: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    error: str = ""
    stopping_since: float | None = None  # SIGTERM sent at
    killed: bool = False
    replace: bool = False  # stopping only to start again with a new spec


class InstanceManager:
    def __init__(
        self,
        *,
        launcher: Launcher,
        clock: clock.Clock,
        policy: RestartPolicy | None = None,
        on_change: Callable[[Mapping[str, int]], None] | None = None,
    ) -> None:
        self._launcher = launcher
        self._clock = clock
        self.policy = policy or RestartPolicy()
        self._on_change = on_change
        self._desired: dict[str, InstanceSpec] = {}
        self._instances: dict[str, _Instance] = {}
        self._pids: dict[str, int] = {}

    # -- the wish -------------------------------------------------------------------------------------------------
    def set_desired(self, specs: Mapping[str, InstanceSpec]) -> None:
        self._desired = dict(specs)
        now = self._clock.monotonic()
        for name, spec in self._desired.items():
            instance = self._instances.get(name)
            if instance is None:
                self._instances[name] = _Instance(spec=spec, wanted_since=now)
                continue
            if instance.spec.restart_key != spec.restart_key and instance.process is not None and spec.run:
                log.info("instance changed, replacing %s", logs.kv(instance=name, kind=spec.kind))
                instance.replace = True
            if spec.run and not instance.spec.run:
                instance.wanted_since = now
                instance.failures = 0
                instance.next_start = now
            instance.spec = spec

    # -- observation ----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, InstanceStatus]:
        result = {}
        for name, instance in self._instances.items():
            if name not in self._desired:
                continue
            result[name] = InstanceStatus(state=self._state(instance), pid=_pid(instance), error=instance.error)
        return result

    def ready(self, name: str) -> bool:
        instance = self._instances.get(name)
        return instance is not None and instance.ready and instance.process is not None

    def pids(self) -> dict[str, int]:
        return dict(self._pids)

    def _state(self, instance: _Instance) -> State:
        if not instance.spec.run:
            return State.STOPPED
        if instance.process is not None and instance.ready:
            return State.RUNNING
        if instance.failures and instance.process is None:
            return State.FAILED
        return State.PENDING

    # -- convergence ----------------------------------------------------------------------------------------------
    async def step(self) -> None:
        now = self._clock.monotonic()
        for name, instance in self._instances.items():
            self._reap(name, instance, now)
        # Engines stop before replicas: an engine flushes to its replicas on SIGTERM, so they must still serve.
        engines_leaving = any(
            inst.process is not None and inst.spec.kind == "engine" and not self._wanted(name, inst)
            for name, inst in self._instances.items()
        )
        for name in list(self._instances):
            instance = self._instances[name]
            wanted = self._wanted(name, instance)
            if instance.process is not None and (not wanted or instance.replace):
                if not (engines_leaving and instance.spec.kind == "replica" and not instance.replace):
                    self._stop(name, instance, now)
                continue
            if instance.process is None:
                if name not in self._desired:
                    del self._instances[name]
                elif wanted and now >= instance.next_start:
                    await self._start(name, instance, now)
                continue
            await self._check_ready(name, instance, now)
        self._publish()

    def _wanted(self, name: str, instance: _Instance) -> bool:
        return name in self._desired and instance.spec.run

    def _reap(self, name: str, instance: _Instance, now: float) -> None:
        process = instance.process
        if process is None:
            return
        code = process.poll()
        if code is None:
            return
        instance.process = None
        instance.ready = False
        if instance.stopping_since is not None:
            log.info("instance stopped %s", logs.kv(instance=name, pid=process.pid, code=code))
            instance.stopping_since = None
            instance.killed = False
            if instance.replace:
                instance.replace = False
                instance.failures = 0
                instance.next_start = now
            return
        instance.failures += 1
        delay = self.policy.backoff(instance.failures)
        instance.next_start = now + delay
        instance.error = (
            f"exited with code {code}; restart {instance.failures} in {delay:g}s; see {instance.spec.log_path}"
        )
        log.warning(
            "instance exited %s",
            logs.kv(instance=name, pid=process.pid, code=code, restarts=instance.failures, backoff=delay),
        )

    def _stop(self, name: str, instance: _Instance, now: float) -> None:
        process = instance.process
        assert process is not None
        if instance.stopping_since is None:
            log.info("stopping instance %s", logs.kv(instance=name, pid=process.pid))
            _signal(process, signal.SIGTERM)
            instance.stopping_since = now
        elif not instance.killed and now - instance.stopping_since >= self.policy.stop_grace:
            log.warning("instance did not stop in time, killing %s", logs.kv(instance=name, pid=process.pid))
            _signal(process, signal.SIGKILL)
            instance.killed = True

    async def _start(self, name: str, instance: _Instance, now: float) -> None:
        spec = instance.spec
        if spec.wait_for and now - instance.wanted_since < self.policy.start_grace:
            for address in spec.wait_for:
                if not await self._launcher.accepts(address):
                    instance.error = f"waiting for {address} to accept before starting"
                    return
        try:
            instance.process = self._launcher.launch(spec)
        except (OSError, errors.MetalhornError) as exc:
            instance.failures += 1
            delay = self.policy.backoff(instance.failures)
            instance.next_start = now + delay
            instance.error = f"cannot start: {exc}; retry in {delay:g}s"
            log.error("instance start failed %s", logs.kv(instance=name, error=exc))
            return
        instance.started_at = now
        instance.ready = False
        log.info("started instance %s", logs.kv(instance=name, kind=spec.kind, pid=instance.process.pid))

    async def _check_ready(self, name: str, instance: _Instance, now: float) -> None:
        process = instance.process
        assert process is not None
        if not instance.ready:
            if await self._launcher.accepts(instance.spec.listen):
                instance.ready = True
                instance.error = ""
                log.info("instance running %s", logs.kv(instance=name, listen=instance.spec.listen))
            elif now - instance.started_at >= self.policy.start_timeout and instance.stopping_since is None:
                instance.error = f"did not accept on {instance.spec.listen} within {self.policy.start_timeout:g}s"
                log.warning("instance start timed out, killing %s", logs.kv(instance=name, pid=process.pid))
                _signal(process, signal.SIGKILL)  # reaped next step as a failure
        elif instance.failures and now - instance.started_at >= self.policy.stable_after:
            instance.failures = 0

    def _publish(self) -> None:
        pids = {name: inst.process.pid for name, inst in self._instances.items() if inst.process is not None}
        if pids != self._pids:
            self._pids = pids
            if self._on_change is not None:
                self._on_change(dict(pids))

    # -- shutdown ---------------------------------------------------------------------------------------------------
    @property
    def alive(self) -> int:
        return sum(1 for inst in self._instances.values() if inst.process is not None)

    @property
    def desired(self) -> dict[str, InstanceSpec]:
        return dict(self._desired)

    def stop_all(self) -> None:
        """Wish nothing: step() sends SIGTERM to every process, SIGKILL after the grace."""
        self._desired = {}


def _pid(instance: _Instance) -> int | None:
    return instance.process.pid if instance.process is not None else None


def _signal(process: Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)
