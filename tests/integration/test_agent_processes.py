"""The real `metalhorn agent` against a scripted manager (a small HTTP server in this test): it starts real
replica and engine processes from the sync answer, serves NBD, restarts a crashed instance on the same port,
and a new agent after a SIGKILL ends the orphans and brings the volume back with its data."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from tests.integration import cluster as cluster_mod
from tests.integration import harness

TOKEN = "test-token"
SIZE = 64 << 20


class ScriptedManager:
    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"replicas": [], "engines": []}
        self.reports: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def last(self) -> dict[str, Any]:
        with self.lock:
            return self.reports[-1] if self.reports else {}


@contextlib.contextmanager
def scripted_manager() -> Iterator[tuple[ScriptedManager, str]]:
    state = ScriptedManager()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.reply(401, {"code": "INVALID", "detail": "bad token"})
            else:
                self.reply(200, {"name": "node-1", "spec": {"disks": {}}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.reply(401, {"code": "INVALID", "detail": "bad token"})
                return
            with state.lock:
                state.reports.append(body)
                answer = json.loads(json.dumps(state.answer))
            # resolve engine replica addresses from the agent's report, as the manager does
            for engine in answer["engines"]:
                engine["spec"]["replica_addresses"] = [
                    body["replicas"][name]["address"] for name in engine["spec"]["replicas"] if name in body["replicas"]
                ]
            self.reply(200, answer)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def start_agent(url: str, data: pathlib.Path, token_file: pathlib.Path, log: pathlib.Path) -> harness.Proc:
    proc = harness.Proc(
        "agent",
        [
            *harness.METALHORN,
            "agent",
            "--node",
            "node-1",
            "--manager",
            url,
            "--data-path",
            str(data),
            "--listen-ip",
            "127.0.0.1",
            "--token-file",
            str(token_file),
            "--block-devices",
            "off",
        ],
        log,
    )
    proc.start()
    return proc


def test_agent_runs_restarts_and_recovers_instances(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    data = tmp_path / "node-1"
    record = data / "run" / "instances.json"
    agents: list[harness.Proc] = []
    with scripted_manager() as (manager, url):
        try:
            agents.append(start_agent(url, data, token_file, tmp_path / "agent-1.log"))
            manager.answer = {
                "replicas": [
                    {"name": f"v-r-{i}", "spec": {"volume": "v", "size": SIZE, "desired": "running"}} for i in range(2)
                ],
                "engines": [{"name": "v-e", "spec": {"volume": "v", "size": SIZE, "replicas": ["v-r-0", "v-r-1"]}}],
            }

            def engine_running() -> bool:
                engine = manager.last().get("engines", {}).get("v-e", {})
                return engine.get("state") == "running" and len(engine.get("replicas") or []) == 2

            harness.wait_until(engine_running, timeout=60, what="the engine to run with 2 replicas", interval=0.2)
            report = manager.last()
            endpoint = report["engines"]["v-e"]["endpoint"]
            assert report["disks"][str(data)]["capacity"] > 0
            cluster_mod.qemu_io(endpoint, "write -P 0x42 0 1M", "flush")

            # a crashed replica comes back on the same address (the engine's own auto-rebuild then takes it back
            # to RW; that is the engine's job and tested with the cluster in test_cluster_failover.py)
            replica_pid = report["replicas"]["v-r-0"]["pid"]
            address = report["replicas"]["v-r-0"]["address"]
            os.kill(replica_pid, signal.SIGKILL)

            def replica_back() -> bool:
                last = manager.last()
                replica = last["replicas"]["v-r-0"]
                return replica["state"] == "running" and replica["pid"] not in (None, replica_pid)

            harness.wait_until(replica_back, timeout=60, what="v-r-0 restarted", interval=0.2)
            assert manager.last()["replicas"]["v-r-0"]["address"] == address

            # SIGKILL the agent: its instances live on; a new agent ends them and starts its own
            pids = set(json.loads(record.read_text())["instances"].values())
            assert len(pids) == 3
            agents[0].kill()
            assert all("metalhorn" in cluster_mod.cmdline(pid) for pid in pids)
            agents.append(start_agent(url, data, token_file, tmp_path / "agent-2.log"))

            def recovered() -> bool:
                now = set(json.loads(record.read_text())["instances"].values())
                return engine_running() and len(now) == 3 and not now & pids

            harness.wait_until(recovered, timeout=90, what="the new agent's instances", interval=0.2)
            assert not [pid for pid in pids if cluster_mod.cmdline(pid)]
            assert manager.last()["engines"]["v-e"]["endpoint"] == endpoint
            cluster_mod.qemu_io(endpoint, "read -P 0x42 0 1M")

            # nothing wanted any more: everything stops; SIGTERM stops the agent cleanly
            manager.answer = {"replicas": [], "engines": []}
            harness.wait_until(
                lambda: json.loads(record.read_text())["instances"] == {}, timeout=60, what="instances stopped"
            )
            assert agents[-1].stop(timeout=30) == 0
        except BaseException:
            for proc in agents:
                print(f"--- {proc.name} ---\n{proc.tail(60)}")
            for log in sorted((data / "logs").glob("*.log")):
                print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
            raise
        finally:
            for proc in agents:
                proc.kill()
            with contextlib.suppress(OSError, ValueError):
                for pid in json.loads(record.read_text())["instances"].values():
                    if "metalhorn" in cluster_mod.cmdline(pid):
                        os.kill(pid, signal.SIGKILL)
