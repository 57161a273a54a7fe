"""10 clients create (and then delete) the same 50 volumes at once through the real manager's API: every call
succeeds or fails cleanly (409 ALREADY_EXISTS / 404, as problem+json), no volume is created twice, and the
controllers leave no duplicate or orphan replica records behind."""

from __future__ import annotations

import collections
import pathlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import httpx
import pytest

from tests.integration.manager_proc import RunningManager, running_manager

CLIENTS = 10
VOLUMES = 50
NODES = 3
TIMEOUT = 60.0


@pytest.fixture
def manager(tmp_path: pathlib.Path) -> Iterator[RunningManager]:
    with running_manager(tmp_path / "manager") as running:
        yield running


class FakeAgents:
    """Three nodes that sync every 0.3 s (reporting no instances), so the controllers schedule replicas."""

    def __init__(self, manager: RunningManager) -> None:
        self.client = httpx.Client(base_url=manager.url, headers=manager.headers, timeout=10, trust_env=False)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sync_all(self) -> None:
        for i in range(1, NODES + 1):
            report = {"address": "127.0.0.1", "disks": {f"/data/n{i}": {"capacity": 1 << 44, "available": 1 << 44}}}
            self.client.post(f"/v1/agents/n{i}/sync", json=report).raise_for_status()

    def _run(self) -> None:
        while not self.stop.wait(0.3):
            self.sync_all()

    def __enter__(self) -> FakeAgents:
        self.sync_all()
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.client.close()


def names() -> list[str]:
    return [f"vol-{i:02d}" for i in range(VOLUMES)]


def run_clients(manager: RunningManager, call: str) -> list[tuple[str, int, str]]:
    """Every client sends `call` for every volume name, each in its own random order."""

    def client(seed: int) -> list[tuple[str, int, str]]:
        order = names()
        random.Random(seed).shuffle(order)
        results = []
        with httpx.Client(base_url=manager.url, headers=manager.headers, timeout=30, trust_env=False) as http:
            for name in order:
                if call == "create":
                    response = http.post("/v1/volumes", json={"name": name, "size": "1G", "replicas": NODES})
                else:
                    response = http.delete(f"/v1/volumes/{name}")
                kind = response.headers.get("content-type", "")
                code = response.json().get("code", "") if kind.startswith("application/problem+json") else ""
                results.append((name, response.status_code, code))
        return results

    with futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        return [item for part in pool.map(client, range(CLIENTS)) for item in part]


def wait_for(manager: RunningManager, condition: str, check: object) -> None:
    deadline = time.monotonic() + TIMEOUT
    with httpx.Client(base_url=manager.url, headers=manager.headers, timeout=10, trust_env=False) as http:
        while time.monotonic() < deadline:
            volumes = http.get("/v1/volumes").json()["items"]
            replicas = http.get("/v1/replicas").json()["items"]
            if check(volumes, replicas):  # type: ignore[operator]
                return
            time.sleep(0.2)
    raise AssertionError(f"not reached within {TIMEOUT}s: {condition}")


def test_concurrent_creates_and_deletes_leave_no_duplicates_or_orphans(manager: RunningManager) -> None:
    with FakeAgents(manager):
        created = run_clients(manager, "create")
        assert len(created) == CLIENTS * VOLUMES
        by_status = collections.Counter((status, code) for _, status, code in created)
        assert set(by_status) <= {(202, ""), (409, "ALREADY_EXISTS")}, by_status
        winners = collections.Counter(name for name, status, _ in created if status == 202)
        assert winners == dict.fromkeys(names(), 1), "each volume is created by exactly one client"

        def scheduled(volumes: list[dict[str, object]], replicas: list[dict[str, object]]) -> bool:
            per_volume = collections.Counter(r["spec"]["volume"] for r in replicas)  # type: ignore[index]
            return len(volumes) == VOLUMES and per_volume == dict.fromkeys(names(), NODES)

        wait_for(manager, f"{NODES} replicas for each of {VOLUMES} volumes", scheduled)
        replicas = httpx.get(f"{manager.url}/v1/replicas", headers=manager.headers).json()["items"]
        for name in names():
            nodes = sorted(r["spec"]["node"] for r in replicas if r["spec"]["volume"] == name)
            assert nodes == [f"n{i}" for i in range(1, NODES + 1)], (name, nodes)

        deleted = run_clients(manager, "delete")
        by_status = collections.Counter((status, code) for _, status, code in deleted)
        assert set(by_status) <= {(202, ""), (404, "NOT_FOUND")}, by_status
        wait_for(manager, "every volume and replica record gone", lambda v, r: not v and not r)
    assert manager.process.poll() is None
