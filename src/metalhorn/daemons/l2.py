"""`metalhorn l2 announce`: one node's layer-2 speaker without a manager, for labs and benchmarks.

    metalhorn l2 announce --node n1 --interface eth0 \\
        --peer n1=198.18.0.11:7946 --peer n2=198.18.0.12:7946 --peer n3=198.18.0.13:7946 \\
        --vip 198.18.0.100 --vip 2001:db8::100 --port 80 \\
        --endpoint 198.18.0.11:8080 --endpoint 198.18.0.12:8080

Every node gets the same --peer list (its own entry gives the address it listens on for probes), so the whole
lab is one command line with a different --node.  All peers are assumed to have the same interfaces.  The
agent will drive the same objects (Membership, Announcer, Delivery) from the manager's desired state.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal

from metalhorn.common import addresses, errors
from metalhorn.common.logs import kv
from metalhorn.daemons import runtime
from metalhorn.lb import election, model
from metalhorn.lb.layer2 import announcer as announcer_mod
from metalhorn.lb.layer2 import delivery as delivery_mod
from metalhorn.lb.layer2 import membership as membership_mod

log = logging.getLogger(__name__)
DEFAULT_PROBE_PORT = 7946


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("l2", help="layer-2 announcements (ARP/NDP) without a manager")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="l2_command", metavar="COMMAND")
    a = commands.add_parser("announce", help="announce VIPs from this node when it wins them; deliver to endpoints")
    a.add_argument("--node", required=True, help="this node's name (must appear in --peer)")
    a.add_argument("--interface", action="append", required=True, help="interface to answer on (repeatable)")
    a.add_argument("--peer", action="append", default=[], help="NAME=IP:PORT of every node, this one included")
    a.add_argument("--vip", action="append", default=[], help="service IP (repeatable, IPv4 or IPv6)")
    a.add_argument("--port", action="append", type=int, default=[], help="TCP port served on the VIPs (default 80)")
    a.add_argument("--endpoint", action="append", default=[], help="backend IP:PORT or [V6]:PORT (repeatable)")
    a.add_argument("--name", default="default/l2", help="balancer name (default default/l2)")
    a.add_argument("--probe-interval", type=float, default=membership_mod.DEFAULT_INTERVAL, help="seconds")
    a.add_argument("--probe-timeout", type=float, default=None, help="seconds (default 3 intervals)")
    a.add_argument("--delivery", choices=("auto", "nft", "proxy", "none"), default="auto")
    a.add_argument("--health-interval", type=float, default=1.0, help="endpoint TCP check period, seconds")
    a.set_defaults(func=_announce)


def _peers(texts: list[str]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for text in texts:
        name, sep, addr = text.partition("=")
        if not sep or not name:
            raise errors.InvalidArgument(f"--peer {text!r}: expected NAME=IP:PORT")
        a = addresses.parse_address(addr, what="--peer")
        if a.is_unix:
            raise errors.InvalidArgument(f"--peer {text!r}: probes need IP:PORT")
        out[name] = (a.host, a.port or DEFAULT_PROBE_PORT)
    return out


def _endpoints(texts: list[str]) -> list[model.Endpoint]:
    out = []
    for text in texts:
        a = addresses.parse_address(text, what="--endpoint")
        try:
            out.append(model.Endpoint(ipaddress.ip_address(a.host), a.port))
        except ValueError:
            raise errors.InvalidArgument(f"--endpoint {text!r}: {a.host!r} is not an IP address") from None
    return out


def _announce(args: argparse.Namespace) -> int:
    peers = _peers(args.peer)
    if args.node not in peers:
        raise errors.InvalidArgument(f"--node {args.node}: add --peer {args.node}=IP:PORT (its probe address)")
    try:
        vips = [ipaddress.ip_address(v) for v in args.vip]
    except ValueError as exc:
        raise errors.InvalidArgument(f"--vip: {exc}") from None
    settings = membership_mod.Settings(interval=args.probe_interval, timeout=args.probe_timeout)
    runtime.run(_run(args, peers, vips, _endpoints(args.endpoint), settings))
    return 0


async def _run(
    args: argparse.Namespace,
    peers: dict[str, tuple[str, int]],
    vips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    endpoints: list[model.Endpoint],
    settings: membership_mod.Settings,
) -> None:
    interfaces = tuple(args.interface)
    node = election.Node(args.node, interfaces=interfaces)
    delivery = None
    if args.delivery != "none":
        delivery = delivery_mod.Delivery(
            mode=delivery_mod.Mode(args.delivery), health=delivery_mod.HealthSettings(interval=args.health_interval)
        )
        await delivery.start()
    announcer = announcer_mod.Announcer(node, delivery=delivery, holdoff=settings.window)
    membership = membership_mod.Membership(args.node, settings=settings)

    def changed(healthy: frozenset[str]) -> None:
        announcer.on_membership(healthy, ready=membership.ready())

    def tick() -> None:
        # Readiness and link state change without a membership change; re-evaluate at the probe pace.
        announcer.on_membership(membership.healthy(), ready=membership.ready())

    membership.on_change, membership.on_tick = changed, tick
    announcer.set_nodes(election.Node(name, interfaces=interfaces) for name in peers)
    announcer.set_balancer(args.name, vips, endpoints, ports=args.port or [80])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await membership.start(peers[args.node])
    membership.set_peers(peers)
    log.info("l2 announce ready %s", kv(node=args.node, interfaces=",".join(interfaces), vips=len(vips)))
    try:
        await stop.wait()
    finally:
        membership.close()
        await announcer.close()
    log.info("l2 announce stopped %s", kv(node=args.node, **announcer.counters()))
