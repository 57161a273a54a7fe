"""`metalhorn up [--nodes 3] [--data-dir DIR]`: a whole metalhorn cluster on this machine.

Starts the manager and N node agents as child processes on loopback (each agent with its own node name and data
path), waits until every node is ready, prints the API URL, the token file, a node table and how to create and
attach a volume, then watches the children until Ctrl-C/SIGTERM and stops them in order (agents first, they stop
their engines and replicas; then the manager). Started again with the same --data-dir it resumes from the
manager's store and the replica directories: same ports, same volumes, data intact.

Layout of DATA-DIR: manager/ (metalhorn.db, token), nodes/<node>/ (each agent's data path), logs/, up.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import time
from typing import Any

from metalhorn.common import addresses, errors
from metalhorn.control import client as client_mod
from metalhorn.control.agent import processes
from metalhorn.control.cli import output
from metalhorn.daemons import supervisor, upnet

log = logging.getLogger(__name__)

DEFAULT_PORT = 9500
NETNS_AGENT_PORT = 9501  # with --netns every agent has its own address, so one port fits all
READY_TIMEOUT = 90.0


def default_data_dir() -> pathlib.Path:
    """Kept in step with client.default_up_token_file(), so the CLI finds this cluster's token by itself."""
    return client_mod.default_up_token_file().parent.parent


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "up",
        help="start a local metalhorn cluster on this machine (manager + N node agents)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=None, help="number of nodes (default 3, or as last time)")
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="store, replicas and logs (default /var/lib/metalhorn as root, else ~/.local/share/metalhorn)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"manager API port on 127.0.0.1 (default {DEFAULT_PORT}, or as last time)",
    )
    parser.add_argument("--listen-ip", default="127.0.0.1", help="IP the agents' instances listen on (loopback)")
    parser.add_argument(
        "--replica-replenishment-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a failed replica may come back before it is rebuilt elsewhere (default 10)",
    )
    parser.add_argument(
        "--node-down-after", type=float, default=None, metavar="SECONDS", help="a node without sync is down after"
    )
    parser.add_argument(
        "--block-devices",
        choices=("auto", "off"),
        default="auto",
        help="attached volumes also get /dev/metalhorn/<volume> when root with nbdfuse (default auto)",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="root: each agent in its own network namespace mh-up-<node> on bridge mh-up-br (198.18.0.0/24, "
        "2001:db8::/64), announcing service IPs over L2/BGP for real; the manager listens on 198.18.0.1",
    )
    parser.set_defaults(func=run)


class _ClusterSupervisor(supervisor.Supervisor):
    def stop_all(self) -> None:
        """SIGTERM all agents at once (each stops its instances), then wait for them, then the manager."""
        for child in self.children:
            if child.name.startswith("agent-") and child.popen is not None and child.popen.poll() is None:
                os.kill(child.popen.pid, signal.SIGTERM)
        super().stop_all()


def _load_state(path: pathlib.Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise errors.CorruptMetadata(f"{path}: {exc}; fix or remove it (the volumes live in manager/)") from exc
    if not isinstance(state, dict) or "manager_port" not in state:
        raise errors.CorruptMetadata(
            f"{path} was written by an older `metalhorn up` (one volume, no manager); use another --data-dir"
        )
    return state


def _save_state(path: pathlib.Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _plan(data_dir: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    """Ports and node names, kept in DATA/up.json so a restart reuses them (stable endpoints)."""
    path = data_dir / "up.json"
    state = _load_state(path)
    nodes = args.nodes if args.nodes is not None else int(state.get("nodes", 3))
    if nodes < 1:
        raise errors.InvalidArgument(f"--nodes must be at least 1, got {nodes}")
    port = args.port if args.port is not None else state.get("manager_port")
    if port is None:
        port = DEFAULT_PORT if processes.bindable("127.0.0.1", DEFAULT_PORT) else processes.free_port("127.0.0.1")
    agent_ports: dict[str, int] = dict(state.get("agent_ports") or {})
    for index in range(1, nodes + 1):
        name = f"node-{index}"
        if name not in agent_ports or not processes.bindable(args.listen_ip, agent_ports[name]):
            agent_ports[name] = processes.free_port(args.listen_ip)
    state = {"manager_port": int(port), "nodes": nodes, "agent_ports": agent_ports}
    _save_state(path, state)
    return state


def run(args: argparse.Namespace) -> int:
    data_dir: pathlib.Path = (args.data_dir or default_data_dir()).resolve()
    for sub in ("manager", "nodes", "logs"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    plan = _plan(data_dir, args)
    network = upnet.Network([f"node-{i}" for i in range(1, plan["nodes"] + 1)]) if args.netns else None
    host = upnet.MANAGER_V4 if network is not None else "127.0.0.1"
    url = f"http://{host}:{plan['manager_port']}"
    token_file = data_dir / "manager" / "token"
    sup = _ClusterSupervisor()
    sup.install_signal_handlers()
    try:
        return _run(args, sup, network, data_dir=data_dir, plan=plan, url=url, token_file=token_file)
    finally:
        if network is not None:
            network.teardown()


def _run(
    args: argparse.Namespace,
    sup: supervisor.Supervisor,
    network: upnet.Network | None,
    *,
    data_dir: pathlib.Path,
    plan: dict[str, Any],
    url: str,
    token_file: pathlib.Path,
) -> int:
    host = upnet.MANAGER_V4 if network is not None else "127.0.0.1"
    try:
        if network is not None:
            network.setup()
        sup.start(
            supervisor.Child(
                name="manager",
                args=supervisor.metalhorn_command(
                    "manager",
                    "--store",
                    f"sqlite:///{data_dir / 'manager' / 'metalhorn.db'}",
                    "--listen",
                    f"{host}:{plan['manager_port']}",
                    "--state-dir",
                    str(data_dir / "manager"),
                ),
                log_path=data_dir / "logs" / "manager.log",
                ready_address=addresses.Address(host=host, port=plan["manager_port"]),
                restart=True,
                max_restarts=20,
            )
        )
        _wait(token_file.exists, what=f"the manager's token file {token_file}", sup=sup, timeout=30.0)
        target = client_mod.Target(url=url, token=client_mod.read_token(token_file), token_source=str(token_file))
        with client_mod.Client(target) as api:
            _apply_settings(api, args)
            agents = [
                _agent(
                    name,
                    data_dir,
                    args,
                    url=url,
                    token_file=token_file,
                    port=NETNS_AGENT_PORT if network is not None else plan["agent_ports"][name],
                    network=network,
                )
                for name in (f"node-{index}" for index in range(1, plan["nodes"] + 1))
            ]
            for child in agents:  # all at once: they boot in parallel
                sup.children.append(child)
                child.spawn()
            for child in agents:
                child.wait_ready(timeout=60.0)
            nodes = _wait_ready(api, plan["nodes"], sup)
    except BaseException:
        sup.stop_all()
        raise
    if sup.stopping:
        sup.stop_all()
        return 0
    print(_banner(url=url, token_file=token_file, data_dir=data_dir, nodes=nodes), flush=True)
    return sup.run()


def _agent(
    name: str,
    data_dir: pathlib.Path,
    args: argparse.Namespace,
    *,
    url: str,
    token_file: pathlib.Path,
    port: int,
    network: upnet.Network | None = None,
) -> supervisor.Child:
    node_dir = data_dir / "nodes" / name
    node_dir.mkdir(parents=True, exist_ok=True)
    listen_ip = network.by_node(name).ip4 if network is not None else args.listen_ip
    # On loopback every agent shares one network stack: no announcements (they would touch the host's ARP and
    # nftables, and collide on the probe port). In a namespace each agent owns its stack and its eth0.
    lb = ["--lb", "on", "--interface", "eth0"] if network is not None else ["--lb", "off"]
    argv = supervisor.metalhorn_command(
        "agent",
        "--node",
        name,
        "--manager",
        url,
        "--data-path",
        str(node_dir),
        "--listen-ip",
        listen_ip,
        "--token-file",
        str(token_file),
        "--port",
        str(port),
        "--block-devices",
        args.block_devices,
        *lb,
    )
    return supervisor.Child(
        name=f"agent-{name}",
        args=network.wrap(name, argv) if network is not None else argv,
        log_path=data_dir / "logs" / f"{name}.log",
        ready_address=addresses.Address(host=listen_ip, port=port),
        restart=False,  # an agent that dies is a node that failed: the cluster shows it and heals around it
    )


def _apply_settings(api: client_mod.Client, args: argparse.Namespace) -> None:
    settings: dict[str, float] = {"replica_replenishment_wait": args.replica_replenishment_wait}
    if args.node_down_after is not None:
        settings["node_down_after"] = args.node_down_after
    try:
        api.update_settings(settings)
    except errors.MetalhornError as exc:
        log.warning("could not apply settings %s: %s", settings, exc.message)


def _wait(predicate: Any, *, what: str, sup: supervisor.Supervisor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if sup.stopping:
            return
        for child in sup.children:
            if child.exited and not child.restart:
                raise errors.Unavailable(f"{child.name} exited while starting; see {child.log_path}")
        if time.monotonic() >= deadline:
            raise errors.Unavailable(f"timed out after {timeout:g}s waiting for {what}; see the logs in DATA-DIR/logs")
        time.sleep(0.1)


def _wait_ready(api: client_mod.Client, count: int, sup: supervisor.Supervisor) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal nodes
        try:
            nodes = api.list_nodes()
        except errors.MetalhornError:
            return False
        wanted = {f"node-{i}" for i in range(1, count + 1)}
        return wanted <= {str(n.get("name")) for n in nodes if (n.get("status") or {}).get("ready")}

    try:
        _wait(ready, what=f"{count} nodes to be ready", sup=sup, timeout=READY_TIMEOUT)
    except errors.Unavailable as exc:
        raise errors.Unavailable(f"{exc.message}\n{output.node_table(nodes)}") from None
    return nodes


def _banner(*, url: str, token_file: pathlib.Path, data_dir: pathlib.Path, nodes: list[dict[str, Any]]) -> str:
    return "\n".join(
        [
            f"metalhorn is up: {len(nodes)} nodes, API at {url} (docs: {url}/docs)",
            f"  token file:  {token_file}",
            f"  data, logs:  {data_dir}  (logs/, nodes/<node>/logs/)",
            "  in another shell:",
            f"    export METALHORN_MANAGER={url} METALHORN_TOKEN_FILE={token_file}",
            "",
            output.node_table(nodes),
            "",
            "Create and attach a replicated volume:",
            "  metalhorn volume create v1 --size 1G --replicas 3 --wait",
            "  metalhorn volume attach v1 --wait      # shows its NBD endpoint (and /dev/metalhorn/v1 as root)",
            "  metalhorn volume get v1                # replicas, their nodes and modes",
            "  qemu-io -f raw -c 'write -P 0x5a 0 1M' nbd://HOST:PORT/v1",
            "Stop with Ctrl-C; run the same command again to resume with every volume's data intact.",
        ]
    )
