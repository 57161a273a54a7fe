"""`metalhorn agent --node NAME --manager URL --data-path DIR --listen-ip IP`: one per node.

Registers the node with its first sync, then every second reports and converges this node's replica and engine
processes to what the manager wants. SIGTERM/SIGINT stop it cleanly: block devices, then engines (they flush),
then replicas. A killed agent's instances are ended by the next agent of the node (instances.json).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal

from metalhorn.common import clock, errors, logs
from metalhorn.control import client as client_mod
from metalhorn.control.agent import agent as agent_mod
from metalhorn.control.agent import attach, instances, processes, specs, status_server
from metalhorn.control.agent import metrics as agent_metrics
from metalhorn.daemons import runtime

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agent", help="run the node agent (instance manager of replicas and engines)")
    parser.add_argument("--node", required=True, help="this node's name in the cluster")
    parser.add_argument("--manager", default=None, help=f"manager URL (default {client_mod.DEFAULT_MANAGER})")
    parser.add_argument("--data-path", required=True, type=pathlib.Path, help="replicas, logs and sockets live here")
    parser.add_argument("--listen-ip", required=True, help="IP of this node that replicas and engines listen on")
    parser.add_argument("--token-file", default=None, help="the manager's token file")
    parser.add_argument("--zone", default="", help="failure zone of this node (zone anti-affinity)")
    parser.add_argument("--tags", default="", help="node tags, comma separated (volume --node-selector)")
    parser.add_argument(
        "--port", type=int, default=0, help="port of the agent's /healthz and /metrics on --listen-ip (default: any)"
    )
    parser.add_argument(
        "--block-devices",
        choices=("auto", "off"),
        default="auto",
        help="make /dev/metalhorn/<volume> for volumes attached here when root with nbdfuse (default auto)",
    )
    parser.add_argument("--sync-interval", type=float, default=1.0, help="seconds between syncs (default 1)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    specs.check_name(args.node, kind="node")
    if args.sync_interval <= 0:
        raise errors.InvalidArgument(f"--sync-interval must be positive, got {args.sync_interval}")
    target = client_mod.resolve_target(manager=args.manager, token_file=args.token_file)
    if not target.token:
        raise errors.InvalidArgument(
            "no token for the manager: pass --token-file (the manager's STATE_DIR/token) or set METALHORN_TOKEN"
        )
    block = None
    if args.block_devices == "auto":
        ok, why = attach.available()
        if ok:
            block = attach.BlockDevices(run_dir=args.data_path.resolve() / "run")
        else:
            log.info("volumes attached here get no block device %s", logs.kv(reason=why))
    return runtime.run(_serve(args, target, block))


async def _serve(args: argparse.Namespace, target: client_mod.Target, block: attach.BlockDevices | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    holder: list[agent_mod.Agent] = []
    server = status_server.StatusServer(
        metrics=agent_metrics.renderer(lambda: holder[0] if holder else None),
        healthy=lambda: bool(holder) and holder[0].synced,
    )
    await server.start(args.listen_ip, args.port)
    settings = agent_mod.AgentSettings(
        node=args.node,
        data_path=args.data_path.resolve(),
        listen_ip=args.listen_ip,
        zone=args.zone,
        tags=tuple(t.strip() for t in args.tags.split(",") if t.strip()),
        agent_url=f"http://{'[' + args.listen_ip + ']' if ':' in args.listen_ip else args.listen_ip}:{server.port}",
        sync_interval=args.sync_interval,
    )
    api = client_mod.AsyncClient(target)
    agent = agent_mod.Agent(
        settings,
        api=api,
        launcher=processes.PopenLauncher(),
        clock=clock.SystemClock(),
        policy=instances.RestartPolicy(),
        block_devices=block,
    )
    holder.append(agent)
    try:
        await agent.start()
        log.info("agent running %s", logs.kv(node=args.node, manager=target.url, data=settings.data_path))
        await agent.run(stop)
        log.info("agent stopping %s", logs.kv(node=args.node))
    finally:
        await agent.shutdown()
        await server.close()
        await api.aclose()
    log.info("agent stopped %s", logs.kv(node=args.node))
    return 0
