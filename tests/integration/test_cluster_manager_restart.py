"""Issue 5 acceptance: restarting the manager during I/O does not disturb I/O (the data path never goes through
the manager). fio verifies a write/read workload on the NBD export while the manager is killed and restarted."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess

from tests.integration import cluster as cluster_mod
from tests.integration import harness


def test_manager_restart_does_not_disturb_io(tmp_path: pathlib.Path) -> None:
    with cluster_mod.running_cluster(tmp_path / "data", nodes=3) as cluster:
        cluster.cli("volume", "create", "v1", "--size", "256M", "--replicas", "3")
        cluster.wait_volume("v1", lambda v: v["status"].get("robustness") == "healthy", timeout=120, what="healthy")
        cluster.cli("volume", "attach", "v1")
        volume = cluster.wait_volume("v1", lambda v: v["status"].get("endpoint"), timeout=120, what="v1 attached")
        uri = volume["status"]["endpoint"]
        host_port = uri.removeprefix("nbd://").split("/")[0]
        host, port = host_port.rsplit(":", 1)
        fio_log = tmp_path / "fio.log"
        with fio_log.open("wb") as out:
            fio = subprocess.Popen(
                [
                    "fio",
                    "--name=during-restart",
                    "--ioengine=nbd",
                    f"--uri=nbd://{host}:{port}/v1",
                    "--rw=randwrite",
                    "--bs=64k",
                    "--size=128M",
                    "--time_based",
                    "--runtime=12",
                    "--iodepth=8",
                    "--verify=crc32c",
                    "--verify_fatal=1",
                    "--do_verify=1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            harness.wait_until(lambda: fio_log.stat().st_size > 0 or fio.poll() is not None, timeout=20, what="fio")
            manager = cluster.child_pid(" manager ")
            os.kill(manager, signal.SIGKILL)
            harness.wait_until(
                lambda: cluster.cli("node", "ls", check=False).returncode == 0,
                timeout=60,
                what="the manager to be restarted by up",
                interval=0.5,
            )
            assert cluster.child_pid(" manager ") != manager
            code = fio.wait(timeout=120)
        finally:
            if fio.poll() is None:
                fio.kill()
                fio.wait(timeout=10)
        assert code == 0, fio_log.read_text()
        assert "err= 0" in fio_log.read_text()
        volume = cluster.volume("v1")
        assert len(cluster_mod.healthy_replicas(volume)) == 3, volume
