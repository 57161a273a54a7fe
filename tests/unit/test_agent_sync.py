"""The agent's sync loop against a fake manager (httpx MockTransport) and fake processes."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import httpx
from tests.unit.test_agent_instances import FakeLauncher

from metalhorn.control import client
from metalhorn.control.agent import agent as agent_mod
from metalhorn.control.agent import processes
from metalhorn.testing.clock import FakeClock


class FakeManager:
    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"replicas": [], "engines": []}
        self.reports: list[dict[str, Any]] = []
        self.down = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/v1/nodes/node-1":
            return httpx.Response(200, json={"name": "node-1", "spec": {"disks": {}}})
        assert request.url.path == "/v1/agents/node-1/sync"
        self.reports.append(json.loads(request.content))
        return httpx.Response(200, json=self.answer)


def make_agent(tmp_path: pathlib.Path) -> tuple[agent_mod.Agent, FakeManager, FakeLauncher]:
    manager = FakeManager()
    launcher = FakeLauncher()
    api = client.AsyncClient(
        client.Target(url="http://manager.test", token="t"), transport=httpx.MockTransport(manager)
    )
    settings = agent_mod.AgentSettings(node="node-1", data_path=tmp_path, listen_ip="127.0.0.1", zone="z1")
    agent = agent_mod.Agent(settings, api=api, launcher=launcher, clock=FakeClock(), command=["mh"])
    return agent, manager, launcher


def replica(name: str) -> dict[str, Any]:
    return {"name": name, "spec": {"volume": "v1", "node": "node-1", "size": 1 << 20, "desired": "running"}}


async def test_sync_reports_and_converges(tmp_path: pathlib.Path) -> None:
    agent, manager, launcher = make_agent(tmp_path)
    await agent.start()
    await agent.sync_once()
    first = manager.reports[0]
    assert first["address"] == "127.0.0.1" and first["zone"] == "z1"
    assert first["disks"][str(tmp_path)]["capacity"] > 0
    assert first["replicas"] == {} and first["engines"] == {}

    manager.answer = {"replicas": [replica("v1-r-a")], "engines": []}
    await agent.sync_once()
    await agent.instances.step()
    spec, _process = launcher.launched[0]
    assert spec.args[:4] == ("mh", "replica", "serve", str(tmp_path / "replicas" / "v1-r-a"))
    launcher.listening.add(spec.listen)
    await agent.instances.step()
    await agent.sync_once()
    reported = manager.reports[-1]["replicas"]["v1-r-a"]
    assert reported == {"state": "running", "pid": 1000, "error": "", "address": f"tcp://{spec.listen}"}
    record = json.loads((tmp_path / "run" / "instances.json").read_text())
    assert record == {"instances": {"v1-r-a": 1000}, "ports": {"v1-r-a": spec.listen.port}}


async def test_bad_record_is_reported_not_run(tmp_path: pathlib.Path) -> None:
    agent, manager, launcher = make_agent(tmp_path)
    await agent.start()
    bad = replica("v1-r-x")
    bad["spec"]["data_dir"] = "/etc"
    manager.answer = {"replicas": [bad], "engines": []}
    await agent.sync_once()
    await agent.sync_once()
    assert launcher.launched == []
    assert manager.reports[-1]["replicas"]["v1-r-x"]["state"] == "failed"
    assert "not inside a disk" in manager.reports[-1]["replicas"]["v1-r-x"]["error"]


async def test_manager_away_keeps_instances(tmp_path: pathlib.Path) -> None:
    agent, manager, launcher = make_agent(tmp_path)
    await agent.start()
    manager.answer = {"replicas": [replica("v1-r-a")], "engines": []}
    await agent.sync_once()
    await agent.instances.step()
    manager.down = True
    await agent.sync_once()
    await agent.instances.step()
    assert agent.sync_errors == 1 and "metalhorn up" in agent.last_error
    assert launcher.launched[0][1].signals == []


async def test_deleted_replica_directory_goes_after_repeated_absence(tmp_path: pathlib.Path) -> None:
    agent, manager, _launcher = make_agent(tmp_path)
    await agent.start()
    never_known = tmp_path / "replicas" / "someone-else"
    never_known.mkdir(parents=True)
    manager.answer = {"replicas": [replica("v1-r-a")], "engines": []}
    await agent.sync_once()
    await agent.instances.step()
    directory = tmp_path / "replicas" / "v1-r-a"
    directory.mkdir(parents=True)
    manager.answer = {"replicas": [], "engines": []}
    for _ in range(agent_mod.FORGET_AFTER - 1):
        await agent.sync_once()
        await agent.instances.step()  # SIGTERM, the fake exits
    assert directory.exists()
    await agent.sync_once()
    assert not directory.exists()
    assert never_known.exists()


def test_orphan_check_only_matches_metalhorn_processes() -> None:
    assert not processes.is_metalhorn_process(os.getpid())  # pytest
    assert not processes.is_metalhorn_process(2**22 + 12345)  # no such PID
    assert processes.end_orphans({"x": os.getpid(), "y": 1}) == []
