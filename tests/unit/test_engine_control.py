"""The engine control endpoint: newline-delimited JSON, error codes, robustness against garbage."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from metalhorn.common import errors
from metalhorn.storage.engine import control


async def info(_request: dict[str, Any]) -> dict[str, Any]:
    return {"volume": "v", "replicas": []}


def broken(_request: dict[str, Any]) -> dict[str, Any]:
    raise errors.Conflict("someone else won")


def crashing(_request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("bug")


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[control.ControlServer]:
    srv = control.ControlServer({"info": info, "broken": broken, "crash": crashing})
    await srv.start(f"unix:{tmp_path / 'ctl.sock'}")
    await srv.start("127.0.0.1:0")
    try:
        yield srv
    finally:
        srv.close()
        await asyncio.wait_for(srv.wait_closed(), 2)


def permissions(path: str) -> int:
    return pathlib.Path(path).stat().st_mode & 0o777


async def raw(address: str, *lines: bytes) -> list[dict[str, Any]]:
    path = address.removeprefix("unix:")
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        for line in lines:
            writer.write(line)
        await writer.drain()
        replies = [json.loads(await asyncio.wait_for(reader.readline(), 2)) for _ in lines]
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


async def test_info_over_unix_and_tcp(server: control.ControlServer) -> None:
    unix, tcp = server.addresses
    assert unix.startswith("unix:") and tcp.startswith("127.0.0.1:")
    assert await control.request(unix, {"op": "info"}) == {"volume": "v", "replicas": []}
    assert await control.request(tcp, {"op": "info"}) == {"volume": "v", "replicas": []}
    assert permissions(unix.removeprefix("unix:")) == 0o600


async def test_errors_come_back_as_codes(server: control.ControlServer) -> None:
    address = server.addresses[0]
    with pytest.raises(errors.NotSupported, match="unknown op 'nope'"):
        await control.request(address, {"op": "nope"})
    with pytest.raises(errors.Conflict, match="someone else won"):
        await control.request(address, {"op": "broken"})
    with pytest.raises(errors.Internal, match="RuntimeError"):
        await control.request(address, {"op": "crash"})


async def test_garbage_gets_an_error_and_the_connection_keeps_serving(server: control.ControlServer) -> None:
    replies = await raw(
        server.addresses[0],
        b"this is not json\n",
        b"[1, 2]\n",
        b'{"op": 5}\n',
        b'{"op": "info"}\n',
    )
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert {r["error"]["code"] for r in replies[:3]} == {int(errors.ErrorCode.INVALID)}
    assert replies[0]["error"]["name"] == "INVALID"
    assert replies[3]["result"]["volume"] == "v"


async def test_overlong_line_closes_only_that_connection(server: control.ControlServer) -> None:
    path = server.addresses[0].removeprefix("unix:")
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b"x" * (control.MAX_LINE + 10) + b"\n")
        await writer.drain()
        reply = json.loads(await asyncio.wait_for(reader.readline(), 2))
        assert reply["error"]["code"] == int(errors.ErrorCode.INVALID)
    finally:
        writer.close()
        await writer.wait_closed()
    assert (await control.request(server.addresses[0], {"op": "info"}))["volume"] == "v"


async def test_unreachable_endpoint_is_unavailable(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.Unavailable, match="cannot reach"):
        await control.request(f"unix:{tmp_path / 'none.sock'}", {"op": "info"}, timeout=1)


async def test_refuses_to_replace_a_regular_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep me")
    srv = control.ControlServer({})
    with pytest.raises(errors.AlreadyExists):
        await srv.start(f"unix:{path}")
    assert path.read_text() == "keep me"
