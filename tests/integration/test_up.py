"""The README's main command, tried as a new user would: up, create, attach, write, Ctrl-C, up again, read."""

from __future__ import annotations

import pathlib

from tests.integration import cluster as cluster_mod


def endpoint(volume: dict[str, object]) -> str:
    status = volume["status"]
    assert isinstance(status, dict)
    return str(status["endpoint"])


def test_up_resumes_with_every_volume_and_its_data(tmp_path: pathlib.Path) -> None:
    cluster = cluster_mod.Cluster(data_dir=tmp_path / "data", nodes=3, extra=("--block-devices", "off"))
    try:
        banner = cluster.start()
        assert cluster.url in banner and "token" in banner and "metalhorn volume create" in banner
        cluster.cli("volume", "create", "keep", "--size", "64M", "--replicas", "2", "--wait", "--timeout", "120")
        cluster.cli("volume", "attach", "keep", "--wait", "--timeout", "120")
        uri = endpoint(cluster.volume("keep"))
        cluster_mod.qemu_io(uri, "write -P 0x5a 1M 128k", "flush")
        assert cluster.stop() == 0, cluster.logs()
        assert not [pid for pid in cluster.instance_pids() if "metalhorn" in cluster_mod.cmdline(pid)]

        cluster.start()
        volume = cluster.wait_volume(
            "keep",
            lambda v: v["status"].get("state") == "attached" and len(cluster_mod.healthy_replicas(v)) == 2,
            timeout=120,
            what="the volume to be attached again with both replicas",
        )
        assert endpoint(volume) == uri  # same ports after a restart
        cluster_mod.qemu_io(uri, "read -P 0x5a 1M 128k", "read -P 0 0 1M")
        assert cluster.stop() == 0, cluster.logs()
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.kill_all()
