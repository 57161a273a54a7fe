"""The manager's REST API through FastAPI's TestClient against a MemoryStore: auth, problem+json for bad input
naming the field, resource-version conflicts, and the intent each route records."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from metalhorn.control.api import app as app_mod
from metalhorn.control.api import context as context_mod
from metalhorn.testing import clock as fake_clock
from metalhorn.testing import store as store_kit

with warnings.catch_warnings():
    # starlette asks for httpx2 (not installed here); its TestClient works on httpx 0.28 all the same.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Env:
    def __init__(self) -> None:
        self.clock = fake_clock.FakeClock()
        self.store = store_kit.MemoryStore(clock=self.clock)
        self.changes: list[str] = []
        context = context_mod.Context(
            store=self.store,
            clock=self.clock,
            token=TOKEN,
            on_change=self.changes.append,
            metrics=lambda: "metalhorn_up 1\n",
        )
        self.client = TestClient(app_mod.create_app(context), headers=AUTH, raise_server_exceptions=True)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.client.post(path, json=body, **kw)

    def register(self, node: str) -> None:
        report = {"address": "198.18.0.1", "disks": {"/data": {"capacity": 1 << 40, "available": 1 << 40}}}
        assert self.post(f"/v1/agents/{node}/sync", report).status_code == 200


@pytest.fixture
def env() -> Iterator[Env]:
    environment = Env()
    with environment.client:
        yield environment


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] and body["detail"] and body["type"]
    if field is not None:
        assert body["field"] == field, body
    return body


# -- auth ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["none", "wrong", "basic", "longer"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/volumes"), ("POST", "/v1/volumes"), ("GET", "/metrics"), ("POST", "/v1/agents/n1/sync")],
)
def test_every_protected_route_needs_the_token(env: Env, headers: dict[str, str], method: str, path: str) -> None:
    env.client.headers.pop("Authorization")
    response = env.client.request(method, path, headers=headers, json={"name": "v1", "size": "1G"})
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "token" in body["detail"]
    assert env.store.list("volume") == [] and env.store.list("node") == []


def test_open_routes_need_no_token(env: Env) -> None:
    env.client.headers.pop("Authorization")
    assert env.client.get("/healthz").json()["status"] == "ok"
    schema = env.client.get("/openapi.json").json()
    assert "/v1/volumes" in schema["paths"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert env.client.get("/docs").status_code == 200


def test_metrics_with_token(env: Env) -> None:
    response = env.client.get("/metrics")
    assert response.status_code == 200
    assert response.text == "metalhorn_up 1\n"


# -- volumes: intent -------------------------------------------------------------------------------------------------
def test_create_records_intent_and_answers_202_with_the_record(env: Env) -> None:
    response = env.post("/v1/volumes", {"name": "v1", "size": "1G", "replicas": 2})
    assert response.status_code == 202
    record = response.json()
    assert record["kind"] == "volume" and record["name"] == "v1" and record["resource_version"] == 1
    assert record["spec"]["size"] == 1 << 30
    assert record["spec"]["replicas"] == 2
    assert record["spec"]["attach_node"] == ""
    assert record["status"]["state"] == "creating"
    assert env.changes == ["volume"]
    assert env.client.get("/v1/volumes/v1").json() == record
    assert [item["name"] for item in env.client.get("/v1/volumes").json()["items"]] == ["v1"]


def test_duplicate_name_is_409_naming_name(env: Env) -> None:
    env.post("/v1/volumes", {"name": "v1", "size": 4096})
    body = assert_problem(env.post("/v1/volumes", {"name": "v1", "size": 4096}), 409, "name")
    assert body["code"] == "ALREADY_EXISTS"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "v1", "size": "abc"}, "size"),
        ({"name": "v1", "size": -1}, "size"),
        ({"name": "v1", "size": "-5G"}, "size"),
        ({"name": "v1", "size": 0}, "size"),
        ({"name": "v1", "size": 1000}, "size"),
        ({"name": "v1", "size": "9999999T"}, "size"),
        ({"name": "v1", "size": True}, "size"),
        ({"name": "v1", "size": 1.5}, "size"),
        ({"name": "v1"}, "size"),
        ({"name": "../etc", "size": "1G"}, "name"),
        ({"name": "my volume", "size": "1G"}, "name"),
        ({"name": "UPPER", "size": "1G"}, "name"),
        ({"name": "", "size": "1G"}, "name"),
        ({"name": "a" * 64, "size": "1G"}, "name"),
        ({"name": "v1", "size": "1G", "replicas": 0}, "replicas"),
        ({"name": "v1", "size": "1G", "replicas": "three"}, "replicas"),
        ({"name": "v1", "size": "1G", "data_locality": "anywhere"}, "data_locality"),
        ({"name": "v1", "size": "1G", "node_selector": ["bad tag"]}, "node_selector.0"),
        ({"name": "v1", "size": "1G", "colour": "red"}, "colour"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_volume_input_is_422_naming_the_field(env: Env, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(env.post("/v1/volumes", body), 422, field)
    assert problem["code"] == "INVALID"
    assert problem["errors"][0]["field"] == field
    assert env.store.list("volume") == []


def test_body_that_is_not_json_is_422(env: Env) -> None:
    response = env.client.post("/v1/volumes", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 422)


def test_bodies_over_one_mib_are_413(env: Env) -> None:
    huge = {"name": "v1", "size": "1G", "pad": "x" * (1 << 20)}
    assert_problem(env.post("/v1/volumes", huge), 413, "body")

    def chunks() -> Iterator[bytes]:
        for _ in range(17):
            yield b" " * 65536

    response = env.client.post("/v1/volumes", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413, "body")
    assert env.store.list("volume") == []


@pytest.mark.parametrize("path", ["/v1/volumes/..etc", "/v1/volumes/a%20b", "/v1/volumes/A", "/v1/volumes/-x"])
def test_bad_names_in_paths_are_422(env: Env, path: str) -> None:
    assert_problem(env.client.get(path), 422, "name")
    assert_problem(env.client.delete(path), 422, "name")


def test_a_slash_in_a_name_finds_no_route(env: Env) -> None:
    assert_problem(env.client.get("/v1/volumes/..%2Fetc"), 404)


def test_unknown_volume_is_404_problem(env: Env) -> None:
    body = assert_problem(env.client.get("/v1/volumes/nope"), 404)
    assert body["code"] == "NOT_FOUND"
    assert_problem(env.post("/v1/volumes/nope/attach", {}), 404)
    assert_problem(env.client.get("/v1/no-such-route"), 404)


# -- resource versions ---------------------------------------------------------------------------------------------
def test_stale_resource_version_is_409(env: Env) -> None:
    env.register("n1")
    env.post("/v1/volumes", {"name": "v1", "size": "1G"})
    body = assert_problem(env.post("/v1/volumes/v1/attach", {"node": "n1", "resource_version": 7}), 409)
    assert body["code"] == "CONFLICT"
    assert env.store.get("volume", "v1").spec["attach_node"] == ""
    assert env.post("/v1/volumes/v1/attach", {"node": "n1", "resource_version": 1}).status_code == 202
    assert_problem(env.client.delete("/v1/volumes/v1", params={"resource_version": 1}), 409)
    node_version = env.client.get("/v1/nodes/n1").json()["resource_version"]
    assert_problem(env.client.patch("/v1/nodes/n1", json={"tags": ["ssd"], "resource_version": 99}), 409)
    patched = env.client.patch("/v1/nodes/n1", json={"tags": ["ssd"], "resource_version": node_version})
    assert patched.status_code == 200 and patched.json()["spec"]["tags"] == ["ssd"]


# -- attach / detach / expand / delete -------------------------------------------------------------------------------
def test_attach_defaults_to_a_ready_node_and_refuses_a_second_node(env: Env) -> None:
    env.post("/v1/volumes", {"name": "v1", "size": "1G"})
    assert_problem(env.post("/v1/volumes/v1/attach", {}), 400, "node")
    env.register("n2")
    env.register("n1")
    record = env.post("/v1/volumes/v1/attach").json()
    assert record["spec"]["attach_node"] == "n1"
    assert env.post("/v1/volumes/v1/attach", {"node": "n1"}).status_code == 202  # idempotent
    assert_problem(env.post("/v1/volumes/v1/attach", {"node": "n2"}), 409, "node")
    assert_problem(env.post("/v1/volumes/v1/attach", {"node": "ghost"}), 400, "node")
    assert env.post("/v1/volumes/v1/detach", {}).json()["spec"]["attach_node"] == ""


def test_expand_only_grows_a_detached_volume(env: Env) -> None:
    env.register("n1")
    env.post("/v1/volumes", {"name": "v1", "size": "1G"})
    assert_problem(env.post("/v1/volumes/v1/expand", {"size": "2G"}), 400, "size")  # still creating
    rec = env.store.get("volume", "v1")
    env.store.update(rec.with_(status={**rec.status, "state": "detached"}))
    assert_problem(env.post("/v1/volumes/v1/expand", {"size": "512M"}), 400, "size")
    assert_problem(env.post("/v1/volumes/v1/expand", {"size": "abc"}), 422, "size")
    assert env.post("/v1/volumes/v1/expand", {"size": "2G"}).json()["spec"]["size"] == 2 << 30


def test_delete_marks_the_volume_for_the_controller(env: Env) -> None:
    env.post("/v1/volumes", {"name": "v1", "size": "1G"})
    response = env.client.delete("/v1/volumes/v1")
    assert response.status_code == 202
    assert response.json()["spec"]["deleting"] is True
    assert response.json()["status"]["state"] == "deleting"
    assert_problem(env.post("/v1/volumes/v1/attach", {}), 400)


# -- nodes, disks, settings, agents ------------------------------------------------------------------------------------
def test_agent_sync_registers_the_node_and_answers_its_records(env: Env) -> None:
    report = {
        "address": "198.18.0.5",
        "agent_url": "http://198.18.0.5:9501",
        "zone": "z1",
        "tags": ["ssd"],
        "disks": {"/data": {"capacity": 1000, "available": 900, "tags": ["fast"]}},
        "replicas": {},
        "engines": {},
    }
    answer = env.post("/v1/agents/n1/sync", report).json()
    assert answer["replicas"] == [] and answer["engines"] == []
    node = env.client.get("/v1/nodes/n1").json()
    assert node["spec"]["zone"] == "z1" and node["spec"]["tags"] == ["ssd"]
    assert node["spec"]["disks"]["/data"]["tags"] == ["fast"]
    assert node["status"]["ready"] is True
    assert node["status"]["disks"]["/data"]["capacity"] == 1000
    assert env.changes == ["agent"]
    env.post("/v1/agents/n1/sync", report)
    assert env.changes == ["agent"], "an unchanged report does not wake the controllers"


@pytest.mark.parametrize(
    ("report", "field"),
    [
        ({"disks": {"/d": {"capacity": -1}}}, "disks./d.capacity"),
        ({"disks": {"/d": {"capacity": "lots"}}}, "disks./d.capacity"),
        ({"replicas": {"r1": {"state": "exploded"}}}, "replicas.r1.state"),
        ({"tags": "ssd"}, "tags"),
    ],
)
def test_bad_agent_reports_are_422(env: Env, report: dict[str, Any], field: str) -> None:
    assert_problem(env.post("/v1/agents/n1/sync", report), 422, field)
    assert env.store.list("node") == []


def test_add_disk_and_patch_node(env: Env) -> None:
    env.register("n1")
    record = env.post("/v1/nodes/n1/disks", {"path": "/mnt/ssd/", "tags": ["ssd"]}).json()
    assert record["spec"]["disks"]["/mnt/ssd"] == {"schedulable": True, "tags": ["ssd"], "reserved": 0}
    assert_problem(env.post("/v1/nodes/n1/disks", {"path": "relative"}), 422, "path")
    assert_problem(env.post("/v1/nodes/n1/disks", {"path": "/a/../b"}), 422, "path")
    assert_problem(env.post("/v1/nodes/ghost/disks", {"path": "/x"}), 404)
    assert env.client.patch("/v1/nodes/n1", json={"schedulable": False}).json()["spec"]["schedulable"] is False


def test_settings_round_trip_and_validation(env: Env) -> None:
    assert env.client.get("/v1/settings").json()["replica_replenishment_wait"] == 60.0
    answer = env.client.patch("/v1/settings", json={"replica_replenishment_wait": 10}).json()
    assert answer["replica_replenishment_wait"] == 10.0
    assert_problem(env.client.patch("/v1/settings", json={"node_down_after": -1}), 422, "node_down_after")


def test_internal_views_list_replicas_and_engines(env: Env) -> None:
    assert env.client.get("/v1/replicas").json() == {"items": []}
    assert env.client.get("/v1/engines").json() == {"items": []}
