"""EngineService over fake replicas: settings validation, start, info through the control socket, clean stop."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from engine_fake_replica import FakeReplica

from metalhorn.common import addresses, errors
from metalhorn.daemons import engine as engine_cli
from metalhorn.storage.engine import control, service

SIZE = 1 << 20


def settings(replicas: list[str], tmp_path: pathlib.Path, **kwargs: object) -> service.EngineSettings:
    fields: dict[str, object] = {
        "volume": "vol",
        "size": SIZE,
        "replicas": tuple(replicas),
        "listen": addresses.parse_address("127.0.0.1:0"),
        "control": addresses.parse_address(f"unix:{tmp_path / 'ctl.sock'}"),
    }
    fields.update(kwargs)
    return service.EngineSettings(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"volume": ""}, errors.InvalidArgument),
        ({"frontend": "iscsi"}, errors.NotSupported),
        ({"replicas": ()}, errors.InvalidArgument),
        ({"replicas": ("nonsense",)}, errors.InvalidArgument),
        ({"replica_timeout": 0}, errors.InvalidArgument),
    ],
    ids=["empty-volume", "frontend", "no-replicas", "bad-address", "timeout"],
)
def test_settings_are_validated(changes: dict[str, object], error: type[Exception], tmp_path: pathlib.Path) -> None:
    base: dict[str, object] = {"replicas": ("127.0.0.1:1",)}
    base.update(changes)
    with pytest.raises(error):
        settings(list(base.pop("replicas")), tmp_path, **base)  # type: ignore[call-overload]


async def test_start_info_and_clean_stop(tmp_path: pathlib.Path) -> None:
    fakes = [FakeReplica(SIZE) for _ in range(3)]
    for fake in fakes:
        await fake.start()
    svc = service.EngineService(settings([f.address for f in fakes], tmp_path, replica_timeout=0.2))
    try:
        await svc.start()
        assert svc.listening and svc.listening[0].startswith("127.0.0.1:")
        info = await control.request(f"unix:{tmp_path / 'ctl.sock'}", {"op": "info"})
        assert [r["mode"] for r in info["replicas"]] == ["RW", "RW", "RW"]
        assert info["frontend"]["addresses"] == svc.listening
        assert "RW" in engine_cli.render_info(info)
        fakes[1].silent = True  # the keepalive notices a hung replica while the volume is idle
        for _ in range(100):
            info = await control.request(f"unix:{tmp_path / 'ctl.sock'}", {"op": "info"})
            if info["replicas"][1]["mode"] == "ERR":
                break
            await asyncio.sleep(0.02)
        assert [r["mode"] for r in info["replicas"]] == ["RW", "ERR", "RW"]
    finally:
        await svc.stop(grace=2)
        for fake in fakes:
            await fake.stop()
    assert [kind for kind, _, _ in fakes[0].log].count("FLUSH") == 1  # stop flushes the healthy replicas
    assert not (tmp_path / "ctl.sock").exists()


async def test_start_fails_cleanly_when_no_replica_is_usable(tmp_path: pathlib.Path) -> None:
    fake = FakeReplica(SIZE)
    address = await fake.start()
    await fake.stop()
    svc = service.EngineService(settings([address], tmp_path))
    with pytest.raises(errors.Unavailable, match="no usable replica"):
        await svc.start()


def test_render_info_table() -> None:
    text = engine_cli.render_info(
        {
            "volume": "vol",
            "size": 1 << 30,
            "replicas": [
                {"address": "tcp://127.0.0.1:1", "mode": "RW", "reason": ""},
                {"address": "tcp://127.0.0.1:22", "mode": "ERR", "reason": "stale: revision 1 < 2"},
            ],
            "counters": {"reads": 1, "read_bytes": 4096, "writes": 2, "write_bytes": 8192, "flushes": 0, "errors": 0},
        }
    )
    assert text.splitlines() == [
        "volume vol  size 1GiB",
        "REPLICA             MODE  REASON",
        "tcp://127.0.0.1:1   RW",
        "tcp://127.0.0.1:22  ERR   stale: revision 1 < 2",
        "reads 1 (4KiB)  writes 2 (8KiB)  flushes 0  errors 0",
    ]
