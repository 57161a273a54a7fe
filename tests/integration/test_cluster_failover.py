"""Issue 5 acceptance with 4 nodes: SIGKILL one agent and its instances -> its node goes down, the volume is
degraded, and after the replenishment wait a replica is rebuilt on the fourth node; the data verifies."""

from __future__ import annotations

import os
import pathlib
import signal

from tests.integration import cluster as cluster_mod
from tests.integration import harness


def test_lost_node_is_replaced_by_a_rebuild_on_the_fourth(tmp_path: pathlib.Path) -> None:
    extra = ("--replica-replenishment-wait", "3", "--node-down-after", "3")
    with cluster_mod.running_cluster(tmp_path / "data", nodes=4, extra=extra) as cluster:
        cluster.cli("volume", "create", "v1", "--size", "256M", "--replicas", "3")
        cluster.wait_volume("v1", lambda v: v["status"].get("robustness") == "healthy", timeout=120, what="v1 healthy")
        cluster.cli("volume", "attach", "v1")
        volume = cluster.wait_volume(
            "v1",
            lambda v: v["status"].get("state") == "attached" and v["status"].get("endpoint"),
            timeout=120,
            what="v1 attached",
        )
        uri = volume["status"]["endpoint"]
        attach_node = volume["spec"]["attach_node"]
        cluster_mod.qemu_io(uri, "write -P 0x71 0 8M", "write -P 0x72 200M 8M", "flush")

        before = {r["node"] for r in volume["status"]["replicas"]}
        assert len(before) == 3
        victim = sorted(before - {attach_node})[0]
        spare = ({f"node-{i}" for i in range(1, 5)} - before).pop()

        agent = cluster.child_pid(f"--node {victim} ")
        instances = [pid for pid in cluster.instance_pids(victim) if "metalhorn" in cluster_mod.cmdline(pid)]
        assert instances, f"no recorded instances on {victim}"
        for pid in [agent, *instances]:
            os.kill(pid, signal.SIGKILL)

        def node_down() -> bool:
            nodes = {n["name"]: n for n in cluster.json("node", "ls")}
            return not nodes[victim]["status"].get("ready")

        harness.wait_until(node_down, timeout=60, what=f"{victim} to be reported down", interval=0.5)
        cluster.wait_volume(
            "v1",
            lambda v: v["status"].get("robustness") == "degraded",
            timeout=60,
            what="v1 degraded",
        )
        # I/O keeps working on the two remaining replicas meanwhile.
        cluster_mod.qemu_io(uri, "write -P 0x73 100M 4M", "read -P 0x71 0 8M")

        healed = cluster.wait_volume(
            "v1",
            lambda v: (
                v["status"].get("robustness") == "healthy"
                and len(cluster_mod.healthy_replicas(v)) == 3
                and spare in {r["node"] for r in cluster_mod.healthy_replicas(v)}
            ),
            timeout=240,
            what=f"a replica rebuilt on {spare}",
        )
        nodes = {r["node"] for r in cluster_mod.healthy_replicas(healed)}
        assert victim not in nodes and len(nodes) == 3
        cluster_mod.qemu_io(uri, "read -P 0x71 0 8M", "read -P 0x73 100M 4M", "read -P 0x72 200M 8M")
