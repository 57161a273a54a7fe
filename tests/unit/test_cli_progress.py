"""Progress bars of `volume expand --wait` and `volume get --wait` against the status the manager reports
(status.expansion {size, done, total} in replicas, status.rebuild {replica, done, total} in bytes)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from metalhorn.control.cli import common, output
from metalhorn.daemons import main

GiB = 1 << 30


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def volume(**status: Any) -> dict[str, Any]:
    base = {"state": "detached", "robustness": "healthy", "reasons": [], "rebuild": None, "expansion": None}
    return {"name": "v1", "spec": {"size": 2 * GiB, "replicas": 3}, "status": {**base, **status}}


class FakeApi:
    """Answers get_volume from a script of records (the last one repeats)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records: Iterator[dict[str, Any]] = iter(records)
        self.last = records[-1]
        self.expanded: list[tuple[str, object]] = []

    def __enter__(self) -> FakeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_volume(self, name: str) -> dict[str, Any]:
        self.last = next(self.records, self.last)
        return self.last

    def expand_volume(self, name: str, *, size: object) -> dict[str, Any]:
        self.expanded.append((name, size))
        return volume(size=GiB)


def run(monkeypatch: pytest.MonkeyPatch, api: FakeApi, argv: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(common, "connect", lambda _args: api)
    monkeypatch.setattr(common.time, "sleep", lambda _s: None)
    err, out = Tty(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    args = main.build_parser().parse_args(argv)
    return args.func(args), out.getvalue(), err.getvalue()


def test_expansion_bar_counts_replicas() -> None:
    assert output.progress_bar(1, 3, width=6, unit="replicas") == "[##----]  33%  1/3 replicas"
    assert output.expansion_line({"size": 2 * GiB, "done": 2, "total": 3}) == (
        "to 2GiB [####################----------]  66%  2/3 replicas"
    )


def test_volume_detail_shows_a_running_expansion() -> None:
    text = output.volume_detail(volume(size=GiB, expansion={"size": 2 * GiB, "done": 0, "total": 3}))
    assert "expansion:" in text
    assert "0/3 replicas" in text


def test_expand_wait_draws_the_bar_until_every_replica_has_the_new_size(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(
        [
            volume(size=GiB),  # the controller has not looked yet
            volume(size=GiB, expansion={"size": 2 * GiB, "done": 0, "total": 3}),
            volume(size=GiB, expansion={"size": 2 * GiB, "done": 2, "total": 3}),
            volume(size=2 * GiB),
        ]
    )
    code, out, err = run(monkeypatch, api, ["volume", "expand", "v1", "--size", "2G", "--wait"])
    assert code == 0
    assert api.expanded == [("v1", "2G")]
    frames = [frame.rstrip("\n").removesuffix("\x1b[K") for frame in err.split("\r") if frame]
    assert frames[1:3] == [
        "expanding to 2GiB [------------------------------]   0%  0/3 replicas",
        "expanding to 2GiB [####################----------]  66%  2/3 replicas",
    ]
    assert err.endswith("\n")
    assert "expansion:" not in out  # the final record has none running


def test_get_wait_draws_the_rebuild_bar_until_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    rebuilding = {"replica": "tcp://127.0.0.1:4002", "done": 256 << 20, "total": GiB}
    api = FakeApi(
        [
            volume(state="attached", robustness="degraded", rebuild=rebuilding),
            volume(state="attached", robustness="degraded", rebuild={**rebuilding, "done": 768 << 20}),
            volume(state="attached"),
        ]
    )
    code, out, err = run(monkeypatch, api, ["volume", "get", "v1", "--wait"])
    assert code == 0
    frames = [frame.rstrip("\n").removesuffix("\x1b[K") for frame in err.split("\r") if frame.strip()]
    assert frames == [
        "rebuilding tcp://127.0.0.1:4002 [#######-----------------------]  25%  256MiB/1GiB",
        "rebuilding tcp://127.0.0.1:4002 [######################--------]  75%  768MiB/1GiB",
    ]
    assert "robustness:" in out and "healthy" in out


def test_get_without_wait_asks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi([volume(robustness="degraded"), volume()])
    code, out, err = run(monkeypatch, api, ["volume", "get", "v1"])
    assert (code, err) == (0, "")
    assert "degraded" in out
