"""Issue 5 acceptance, as a new user: `metalhorn up`, then create, attach, write and verify through NBD,
`node ls`, and `volume get` showing three healthy replicas on three distinct nodes."""

from __future__ import annotations

import pathlib
import subprocess

from tests.integration import cluster as cluster_mod
from tests.integration import harness


def test_create_attach_write_verify_three_nodes(tmp_path: pathlib.Path) -> None:
    with cluster_mod.running_cluster(tmp_path / "data", nodes=3) as cluster:
        nodes = cluster.cli("node", "ls").stdout
        lines = nodes.splitlines()
        assert lines[0].split()[:2] == ["NAME", "READY"]
        assert sorted(line.split()[0] for line in lines[1:]) == ["node-1", "node-2", "node-3"]
        assert all(line.split()[1] == "yes" for line in lines[1:]), nodes

        created = cluster.cli("volume", "create", "v1", "--size", "1G", "--replicas", "3")
        assert "v1" in created.stdout
        volume = cluster.wait_volume(
            "v1",
            lambda v: v["status"].get("robustness") == "healthy",
            timeout=120,
            what="v1 to be created healthy",
        )
        cluster.cli("volume", "attach", "v1")
        volume = cluster.wait_volume(
            "v1",
            lambda v: v["status"].get("state") == "attached" and v["status"].get("endpoint"),
            timeout=120,
            what="v1 to be attached",
        )
        uri = volume["status"]["endpoint"]
        assert uri.startswith("nbd://") and uri.endswith("/v1")

        cluster_mod.qemu_io(uri, "write -P 0xa5 0 4M", "write -P 0x3c 1020M 4M", "flush")
        cluster_mod.qemu_io(uri, "read -P 0xa5 0 4M", "read -P 0x3c 1020M 4M", "read -P 0 4M 1M")

        got = cluster.cli("volume", "get", "v1").stdout
        assert "healthy" in got and "attached" in got
        volume = cluster.volume("v1")
        replicas = volume["status"]["replicas"]
        assert len(replicas) == 3 and all(r["mode"] == "RW" for r in replicas), replicas
        assert len({r["node"] for r in replicas}) == 3, replicas
        assert volume["status"]["robustness"] == "healthy"
        assert "v1" in cluster.cli("volume", "ls").stdout


def test_errors_say_what_to_do(tmp_path: pathlib.Path) -> None:
    with cluster_mod.running_cluster(tmp_path / "data", nodes=1) as cluster:
        bad = cluster.cli("volume", "create", "v2", "--size", "abc", check=False)
        assert bad.returncode == 1 and "10G" in bad.stderr
        missing = cluster.cli("volume", "get", "nope", check=False)
        assert missing.returncode == 1 and "nope" in missing.stderr
        env_token = cluster.env  # a copy
        env_token["METALHORN_TOKEN_FILE"] = str(tmp_path / "wrong-token")
        (tmp_path / "wrong-token").write_text("not-the-token\n")
        refused = subprocess.run(
            [*harness.METALHORN, "volume", "ls"], capture_output=True, text=True, env=env_token, timeout=60, check=False
        )
        assert refused.returncode == 1 and "--token-file" in refused.stderr
