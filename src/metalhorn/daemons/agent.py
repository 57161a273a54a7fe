"""`metalhorn agent --node NAME --manager URL --data-path DIR --listen-ip IP`: one per node.

Registers the node with its first sync, then every second reports and converges this node's replica and engine
processes to what the manager wants. SIGTERM/SIGINT stop it cleanly: block devices, then engines (they flush),
then replicas. A killed agent's instances are ended by the next agent of the node (instances.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import pathlib
import signal

from metalhorn.common import clock, errors, logs, metrics
from metalhorn.control import client as client_mod
from metalhorn.control.agent import agent as agent_mod
from metalhorn.control.agent import attach, instances, processes, specs, status_server
from metalhorn.control.agent import lb as lb_mod
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
    lb = parser.add_argument_group("load balancer (layer 2 and BGP announcements of service IPs)")
    lb.add_argument(
        "--lb",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the LB runtime (ARP/NDP, DNAT, BGP): auto = when root and --interface is given, on = always "
        "(BGP-only nodes), off = never",
    )
    lb.add_argument(
        "--interface", action="append", default=[], help="answer ARP/NDP for VIPs on this interface (repeatable)"
    )
    lb.add_argument("--router-id", type=ipaddress.IPv4Address, help="BGP identifier (default: --listen-ip)")
    lb.add_argument("--bgp-next-hop-v6", type=ipaddress.IPv6Address, default=None, help="IPv6 next hop (auto)")
    lb.add_argument("--lb-probe-port", type=int, default=lb_mod.DEFAULT_PROBE_PORT, help="UDP membership port")
    lb.add_argument("--lb-probe-interval", type=float, default=0.1, help="seconds between membership probes")
    lb.add_argument("--lb-probe-timeout", type=float, default=None, help="a silent node is down after (3 intervals)")
    lb.add_argument("--lb-delivery", choices=("auto", "nft", "proxy", "none"), default="auto", help="VIP data path")
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
    lb_registry = metrics.Registry()  # the LB runtime's series, after the agent's own
    base_metrics = agent_metrics.renderer(lambda: holder[0] if holder else None)
    server = status_server.StatusServer(
        metrics=lambda: base_metrics() + (lb_registry.render() if holder else ""),
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
    lb = _lb_runtime(args, settings, api, lb_registry)
    lb_task: asyncio.Task[None] | None = None
    try:
        await agent.start()
        log.info("agent running %s", logs.kv(node=args.node, manager=target.url, data=settings.data_path))
        if lb is not None:
            lb_task = asyncio.create_task(lb.run(stop), name="lb-runtime")
        await agent.run(stop)
        log.info("agent stopping %s", logs.kv(node=args.node))
    finally:
        if lb is not None:
            stop.set()
            if lb_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await lb_task
            try:
                await lb.close()
            except Exception as exc:  # the volumes still have to stop cleanly below
                log.error("lb runtime close failed %s", logs.kv(node=args.node, error=exc))
        await agent.shutdown()
        await server.close()
        await api.aclose()
    log.info("agent stopped %s", logs.kv(node=args.node))
    return 0


def _lb_runtime(
    args: argparse.Namespace,
    settings: agent_mod.AgentSettings,
    api: client_mod.AsyncClient,
    registry: metrics.Registry,
) -> lb_mod.LbRuntime | None:
    """The LB runtime, or None when --lb says so. auto: only as root (raw sockets, nftables) and with an
    --interface, so an agent started without one never touches the host's nftables or ARP."""
    if args.lb == "off":
        return None
    if args.lb == "auto" and (os.geteuid() != 0 or not args.interface):
        why = "not root" if os.geteuid() != 0 else "no --interface (use --lb on for BGP only)"
        log.info("no LB announcements from this node %s", logs.kv(node=args.node, reason=why))
        return None
    lb_settings = lb_mod.LbSettings(
        node=args.node,
        listen_ip=args.listen_ip,
        interfaces=tuple(args.interface),
        router_id=args.router_id,
        next_hop_v6=args.bgp_next_hop_v6,
        probe_port=args.lb_probe_port,
        probe_interval=args.lb_probe_interval,
        probe_timeout=args.lb_probe_timeout,
        delivery=args.lb_delivery,
        tags=settings.tags,
        zone=settings.zone,
    )
    return lb_mod.LbRuntime(lb_settings, api=api, clock=clock.SystemClock(), registry=registry)
