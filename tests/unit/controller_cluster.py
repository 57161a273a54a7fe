"""A simulated cluster for controller tests: MemoryStore, FakeClock, both controllers, and fake agents that
sync like the real one (report what they were told to run, run what the answer says)."""

from __future__ import annotations

import itertools
from typing import Any

from metalhorn.control.controllers import agentsync, nodes, volumes
from metalhorn.control.controllers import settings as settings_mod
from metalhorn.control.store import record as record_mod
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit

GiB = 1 << 30


class FakeAgent:
    def __init__(self, cluster: Cluster, name: str, index: int) -> None:
        self.cluster = cluster
        self.name = name
        self.ip = f"198.18.0.{index}"
        self.answer: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        self.engine_modes: dict[str, dict[str, str]] = {}  # engine -> address -> mode
        self.crashed: set[str] = set()  # replica names reported failed
        self.capacity = 100 * GiB

    def address(self, name: str) -> str:
        if name not in self.ports:
            self.ports[name] = next(self.cluster.ports)
        return f"tcp://{self.ip}:{self.ports[name]}"

    def report(self) -> dict[str, Any]:
        replicas = {}
        for rec in self.answer.get("replicas", []):
            name = rec["name"]
            state = "failed" if name in self.crashed else "running"
            replicas[name] = {"state": state, "address": self.address(name), "pid": 100, "error": ""}
        engines = {}
        for rec in self.answer.get("engines", []):
            name, spec = rec["name"], rec["spec"]
            if spec["desired"] == "stopped" or not spec["replica_addresses"]:
                engines[name] = {"state": "stopped", "endpoint": "", "replicas": [], "rebuild": None, "pid": None}
                self.engine_modes.pop(name, None)
                continue
            modes = self.engine_modes.setdefault(name, {})
            first = not modes
            for address in spec["replica_addresses"]:
                # A started engine opens its replicas RW; a replica added later rebuilds (WO) for one sync.
                if address not in modes:
                    modes[address] = "RW" if first else "WO"
                elif modes[address] == "WO":
                    modes[address] = "RW"
            for address in list(modes):
                if address not in spec["replica_addresses"]:
                    del modes[address]
            engines[name] = {
                "state": "running",
                "endpoint": f"nbd://{self.ip}:10809/{spec['volume']}",
                "replicas": [{"address": a, "mode": m, "reason": ""} for a, m in modes.items()],
                "rebuild": None,
                "pid": 200,
                "error": "",
            }
        return {
            "address": self.ip,
            "agent_url": f"http://{self.ip}:9501",
            "zone": "",
            "tags": [],
            "disks": {f"/data/{self.name}": {"capacity": self.capacity, "available": self.capacity, "tags": []}},
            "replicas": replicas,
            "engines": engines,
        }

    def sync(self) -> agentsync.Outcome:
        outcome = agentsync.sync(self.cluster.store, node=self.name, report=self.report(), clock=self.cluster.clock)
        self.answer = outcome.answer
        return outcome


class Cluster:
    def __init__(self, *, nodes_count: int = 3, wait: float = 60.0, down_after: float = 10.0) -> None:
        self.clock = fake_clock.FakeClock()
        self.store = store_kit.MemoryStore(clock=self.clock)
        settings_mod.save(self.store, {"replica_replenishment_wait": wait, "node_down_after": down_after})
        names = itertools.count(1)
        self.volumes = volumes.VolumeController(
            store=self.store, clock=self.clock, replica_name=lambda vol: f"{vol}-r{next(names)}"
        )
        self.nodes = nodes.NodeController(store=self.store, clock=self.clock)
        self.ports = itertools.count(20000)
        self.agents = {f"n{i}": FakeAgent(self, f"n{i}", i) for i in range(1, nodes_count + 1)}
        self.up = set(self.agents)

    def step(self, rounds: int = 1, *, seconds: float = 1.0) -> None:
        """One second of cluster life: agents that are up sync, then every controller key is reconciled."""
        for _ in range(rounds):
            self.clock.advance(seconds)
            for name in sorted(self.up):
                self.agents[name].sync()
            for key in self.nodes.names():
                self.nodes.reconcile(key)
            for key in self.volumes.names():
                self.volumes.reconcile(key)

    def create_volume(self, name: str = "v1", *, replicas: int = 3, size: int = GiB, **spec: Any) -> None:
        body = {
            "size": size,
            "replicas": replicas,
            "node_selector": [],
            "disk_selector": [],
            "data_locality": "disabled",
            "replica_anti_affinity": "hard",
            "zone_anti_affinity": "soft",
            "attach_node": "",
            "frontend": "nbd",
            **spec,
        }
        self.store.create(record_mod.Record(kind="volume", name=name, spec=body, status={"state": "creating"}))

    def set_spec(self, name: str, **changes: Any) -> None:
        rec = self.store.get("volume", name)
        self.store.update(rec.with_(spec={**rec.spec, **changes}))

    def volume(self, name: str = "v1") -> record_mod.Record:
        return self.store.get("volume", name)

    def replicas(self, volume: str = "v1") -> list[record_mod.Record]:
        return [r for r in self.store.list("replica") if r.spec["volume"] == volume]
