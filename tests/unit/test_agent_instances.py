"""The instance manager with fake processes and a fake clock: start, ready, crash + backoff, replace, stop."""

from __future__ import annotations

import dataclasses
import pathlib
import signal

import pytest

from metalhorn.common import addresses
from metalhorn.control.agent import instances
from metalhorn.testing.clock import FakeClock

State = instances.State


@dataclasses.dataclass
class FakeProcess:
    pid: int
    code: int | None = None
    signals: list[int] = dataclasses.field(default_factory=list)
    exit_on_term: bool = True

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and self.exit_on_term):
            self.code = -signum


class FakeLauncher:
    def __init__(self) -> None:
        self.launched: list[tuple[instances.InstanceSpec, FakeProcess]] = []
        self.listening: set[addresses.Address] = set()
        self.exit_on_term = True

    def launch(self, spec: instances.InstanceSpec) -> FakeProcess:
        process = FakeProcess(pid=1000 + len(self.launched), exit_on_term=self.exit_on_term)
        self.launched.append((spec, process))
        return process

    async def accepts(self, address: addresses.Address) -> bool:
        return address in self.listening

    def last(self) -> FakeProcess:
        return self.launched[-1][1]


def spec(
    name: str = "r1", *, port: int = 7001, key: object = 1, run: bool = True, **kw: object
) -> instances.InstanceSpec:
    return instances.InstanceSpec(
        name=name,
        kind="replica",
        args=("metalhorn", "replica", "serve", name),
        listen=addresses.Address(host="127.0.0.1", port=port),
        log_path=pathlib.Path(f"/tmp/{name}.log"),
        restart_key=(key,),
        run=run,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def env() -> tuple[instances.InstanceManager, FakeLauncher, FakeClock, list[dict[str, int]]]:
    launcher = FakeLauncher()
    clock = FakeClock()
    records: list[dict[str, int]] = []
    manager = instances.InstanceManager(
        launcher=launcher,
        clock=clock,
        policy=instances.RestartPolicy(backoff_initial=1, backoff_max=8, stable_after=30, stop_grace=5),
        on_change=lambda pids: records.append(dict(pids)),
    )
    return manager, launcher, clock, records


async def test_start_then_running_once_it_accepts(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, _clock, records = env
    manager.set_desired({"r1": spec()})
    await manager.step()
    assert len(launcher.launched) == 1
    assert manager.status()["r1"].state is State.PENDING
    assert records[-1] == {"r1": 1000}
    launcher.listening.add(spec().listen)
    await manager.step()
    assert manager.status()["r1"] == instances.InstanceStatus(state=State.RUNNING, pid=1000, error="")
    await manager.step()
    assert len(launcher.launched) == 1  # no second start


async def test_crash_restarts_with_exponential_backoff_then_resets(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, clock, _records = env
    launcher.listening.add(spec().listen)
    manager.set_desired({"r1": spec()})
    await manager.step()
    delays = []
    for _ in range(5):
        launcher.last().code = 1
        await manager.step()
        status = manager.status()["r1"]
        assert status.state is State.FAILED and "exited with code 1" in status.error
        started = len(launcher.launched)
        waited = 0.0
        while len(launcher.launched) == started:
            clock.advance(0.5)
            waited += 0.5
            await manager.step()
            assert waited < 100
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]  # doubled, capped at backoff_max
    await manager.step()  # becomes ready
    clock.advance(30)
    await manager.step()  # stable: the backoff resets
    launcher.last().code = 1
    await manager.step()
    assert "restart 1 in 1s" in manager.status()["r1"].error


async def test_changed_restart_key_replaces_the_process(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, _clock, _records = env
    launcher.listening.add(spec().listen)
    manager.set_desired({"r1": spec(key=1)})
    await manager.step()
    first = launcher.last()
    manager.set_desired({"r1": spec(key=1, wait_for=())})  # same key: nothing happens
    await manager.step()
    assert first.signals == []
    manager.set_desired({"r1": spec(key=2)})
    await manager.step()
    assert first.signals == [signal.SIGTERM]
    await manager.step()  # reaped, started again at once (no backoff for a replacement)
    assert len(launcher.launched) == 2 and launcher.launched[1][0].restart_key == (2,)


async def test_undesired_instances_stop_with_sigkill_after_grace(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, clock, records = env
    launcher.exit_on_term = False
    manager.set_desired({"r1": spec(), "r2": spec("r2", port=7002)})
    await manager.step()
    manager.set_desired({"r2": spec("r2", port=7002)})
    await manager.step()
    stubborn = launcher.launched[0][1]
    assert stubborn.signals == [signal.SIGTERM]
    clock.advance(4)
    await manager.step()
    assert stubborn.signals == [signal.SIGTERM]
    clock.advance(1)
    await manager.step()
    assert stubborn.signals == [signal.SIGTERM, signal.SIGKILL]
    await manager.step()
    assert set(manager.status()) == {"r2"}
    assert records[-1] == {"r2": 1001}


async def test_desired_stopped_keeps_the_record_but_no_process(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, _clock, _records = env
    manager.set_desired({"r1": spec()})
    await manager.step()
    manager.set_desired({"r1": spec(run=False)})
    await manager.step()
    await manager.step()
    assert manager.status()["r1"] == instances.InstanceStatus(state=State.STOPPED, pid=None, error="")
    manager.set_desired({"r1": spec()})
    await manager.step()
    assert len(launcher.launched) == 2


async def test_start_waits_for_its_dependencies_up_to_the_grace(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, clock, _records = env
    dep = addresses.Address(host="127.0.0.1", port=9999)
    manager.set_desired({"e1": spec("e1", wait_for=(dep,))})
    await manager.step()
    assert launcher.launched == []
    assert "waiting for 127.0.0.1:9999" in manager.status()["e1"].error
    clock.advance(10)  # start_grace: start anyway
    await manager.step()
    assert len(launcher.launched) == 1


async def test_start_timeout_kills_and_counts_as_failure(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, clock, _records = env
    manager.set_desired({"r1": spec()})
    await manager.step()
    clock.advance(60)
    await manager.step()
    assert launcher.last().signals == [signal.SIGKILL]
    await manager.step()
    assert manager.status()["r1"].state is State.FAILED


async def test_stop_all_ends_everything(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, _clock, records = env
    manager.set_desired({"r1": spec(), "r2": spec("r2", port=7002)})
    await manager.step()
    manager.stop_all()
    await manager.step()
    await manager.step()
    assert manager.alive == 0 and records[-1] == {}
    assert all(p.signals == [signal.SIGTERM] for _s, p in launcher.launched)


async def test_engines_stop_before_replicas(env) -> None:  # type: ignore[no-untyped-def]
    manager, launcher, _clock, _records = env
    launcher.exit_on_term = False
    engine = dataclasses.replace(spec("e1", port=7100), kind="engine")
    manager.set_desired({"r1": spec(), "e1": engine})
    await manager.step()
    replica_process, engine_process = launcher.launched[0][1], launcher.launched[1][1]
    manager.stop_all()
    await manager.step()
    assert engine_process.signals == [signal.SIGTERM] and replica_process.signals == []
    engine_process.code = 0
    await manager.step()
    assert replica_process.signals == [signal.SIGTERM]


def test_backoff_is_capped() -> None:
    policy = instances.RestartPolicy(backoff_initial=0.5, backoff_max=10)
    assert [policy.backoff(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert policy.backoff(10_000) == 10
