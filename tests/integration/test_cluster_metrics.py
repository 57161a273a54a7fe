"""Prometheus /metrics of a running `metalhorn up` cluster: the manager (bearer token) shows a volume's replica
modes and robustness, and the agent of the engine's node shows the volume's I/O counters after a write."""

from __future__ import annotations

import pathlib
import re
import urllib.error
import urllib.request

from tests.integration import cluster as cluster_mod
from tests.integration import harness


def scrape(url: str, *, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


AGENT_LABELS = '{node="node-2",volume="m1"}'
AGENT_RW = re.compile(
    r'^metalhorn_engine_replica_mode\{node="node-2",volume="m1",replica="tcp://[^"]+",mode="RW"\} 1$', re.M
)
IO_SERIES = ("write_bytes_total", "read_bytes_total", "write_ops_total")


def value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_manager_and_agent_metrics_after_a_write(tmp_path: pathlib.Path) -> None:
    with cluster_mod.running_cluster(tmp_path / "data", nodes=3) as cluster:
        token = (cluster.data_dir / "manager" / "token").read_text().strip()
        assert scrape(f"{cluster.url}/metrics")[0] == 401

        cluster.cli("volume", "create", "m1", "--size", "64M", "--replicas", "3")
        cluster.cli("volume", "attach", "m1", "--node", "node-2")
        volume = cluster.wait_volume(
            "m1",
            lambda v: v["status"].get("state") == "attached" and v["status"].get("robustness") == "healthy",
            timeout=120,
            what="m1 attached and healthy",
        )
        cluster_mod.qemu_io(volume["status"]["endpoint"], "write -P 0x5a 0 1M", "write -P 0x5a 8M 3M", "flush")
        cluster_mod.qemu_io(volume["status"]["endpoint"], "read -P 0x5a 0 1M")

        status, text = scrape(f"{cluster.url}/metrics", token=token)
        assert status == 200
        modes = re.findall(
            r'^metalhorn_replica_mode\{volume="m1",replica="[^"]+",node="([^"]+)",mode="RW"\} 1$', text, re.M
        )
        assert sorted(modes) == ["node-1", "node-2", "node-3"], text
        assert 'metalhorn_volume_robustness{volume="m1",robustness="healthy"} 1' in text
        assert 'metalhorn_node_ready{node="node-2"} 1' in text
        assert 'metalhorn_controller_reconcile_total{controller="volume",result="success"}' in text

        agent_url = cluster.json("node", "get", "node-2")["status"]["agent_url"]
        got: dict[str, float | None] = {}

        def counted() -> bool:
            # The agent refreshes the engine's counters about once a second.
            code, agent_text = scrape(f"{agent_url}/metrics")
            got.update({name: value(agent_text, f"metalhorn_volume_{name}{AGENT_LABELS}") for name in IO_SERIES})
            got["rw"] = float(len(AGENT_RW.findall(agent_text)))
            return (
                code == 200
                and (got["write_bytes_total"] or 0) >= 4 << 20
                and (got["read_bytes_total"] or 0) >= 1 << 20
                and got["rw"] == 3
            )

        try:
            harness.wait_until(counted, timeout=30, what="agent metrics to count the writes", interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: last scrape {got}") from None
        assert (got["write_ops_total"] or 0) >= 2
