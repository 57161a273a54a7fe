"""The REST client: problem+json becomes the error of its code with a message that says what to do."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import httpx
import pytest

from metalhorn.common import errors
from metalhorn.control import client

TARGET = client.Target(url="http://manager.test", token="s3cret", token_source="--token-file /x/token")


def make(handler: Any) -> client.Client:
    return client.Client(TARGET, transport=httpx.MockTransport(handler))


def problem(status: int, **fields: Any) -> httpx.Response:
    return httpx.Response(status, json=fields, headers={"content-type": "application/problem+json"})


def test_sends_bearer_token_and_json_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"name": "v1", "spec": {"size": 1 << 30}})

    with make(handler) as api:
        record = api.create_volume(name="v1", size="1G", replicas=3, data_locality=None)
    assert record["name"] == "v1"
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert seen[0].url.path == "/v1/volumes"
    assert json.loads(seen[0].content) == {"name": "v1", "size": "1G", "replicas": 3}


@pytest.mark.parametrize(
    ("response", "error", "fragment"),
    [
        (problem(404, code="NOT_FOUND", detail="volume v9 does not exist"), errors.NotFound, "volume v9"),
        (problem(409, code="CONFLICT", detail="resource version 3 is stale; retry"), errors.Conflict, "retry"),
        (
            problem(422, code="INVALID", field="size", detail="size 'abc' is not a number like 10G"),
            errors.InvalidArgument,
            "size 'abc'",
        ),
        (
            problem(422, code="INVALID", field="replicas", detail="must be at least 1"),
            errors.InvalidArgument,
            "replicas: must be at least 1",
        ),
        (problem(400, code="OUT_OF_RANGE", detail="too big"), errors.OutOfRange, "too big"),
        (problem(413, detail="body over 1 MiB"), errors.InvalidArgument, "HTTP 413"),
        (problem(503, detail="no ready node"), errors.Unavailable, "no ready node"),
        (httpx.Response(500, text="boom"), errors.Internal, "HTTP 500"),
        (problem(401, code="INVALID", detail="bad token"), errors.InvalidArgument, "--token-file"),
    ],
    ids=["not-found", "conflict", "field-named", "field-added", "code-wins", "413", "503", "500-text", "401"],
)
def test_errors_map_to_the_tree(response: httpx.Response, error: type[Exception], fragment: str) -> None:
    with make(lambda _request: response) as api, pytest.raises(error) as info:
        api.get_volume("v9")
    assert type(info.value) is error
    assert fragment in str(info.value)


def test_unreachable_manager_says_how_to_start_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with make(handler) as api, pytest.raises(errors.Unavailable, match="metalhorn up"):
        api.list_volumes()


def test_list_accepts_items_object_and_plain_list() -> None:
    answers = iter([[{"name": "a"}], {"items": [{"name": "b"}]}])
    with make(lambda _request: httpx.Response(200, json=next(answers))) as api:
        assert [v["name"] for v in api.list_volumes()] == ["a"]
        assert [v["name"] for v in api.list_volumes()] == ["b"]


def test_resolve_target_order(tmp_path: pathlib.Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    env = {"METALHORN_MANAGER": "198.18.0.1:9500", "METALHORN_TOKEN": "from-env", "HOME": str(tmp_path)}
    assert client.resolve_target(env=env) == client.Target(
        url="http://198.18.0.1:9500", token="from-env", token_source="METALHORN_TOKEN"
    )
    flagged = client.resolve_target(manager="http://m:1/", token_file=str(token), env=env)
    assert (flagged.url, flagged.token) == ("http://m:1", "abc")
    with pytest.raises(errors.NotFound, match="--token-file"):
        client.resolve_target(token_file=str(tmp_path / "missing"), env={})
