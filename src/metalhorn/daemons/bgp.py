"""`metalhorn bgp speak`: one node's BGP speaker from a MetalLB config file, for labs, benchmarks and debugging.

    metalhorn bgp speak --config lb.yaml --node n1 --router-id 198.18.0.11 --vip 198.19.0.10 --vip 2001:db8:100::10

The speaker opens a session to every BGPPeer selecting the node and announces the VIPs as the BGPAdvertisements
say. ``--vip IP/LEN`` means every address of that network (a quick way to load thousands of prefixes);
``--vips-file`` holds one IP[/LEN] per line. SIGHUP re-reads the config file and the VIPs file (so an edited file
announces or withdraws the difference); SIGTERM/SIGINT send Cease to every peer and exit. ``--status-file``
gets the per-peer status as JSON whenever it changes (written atomically).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import pathlib
import signal

from metalhorn.common import clock, errors, logs
from metalhorn.daemons import runtime
from metalhorn.lb import config as lb_config
from metalhorn.lb.bgp import routes, speaker

_log = logging.getLogger(__name__)
_MAX_EXPANSION = 1 << 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bgp = sub.add_parser("bgp", help="BGP speaker tools")
    bgp_sub = bgp.add_subparsers(dest="bgp_command", metavar="COMMAND", required=True)
    speak = bgp_sub.add_parser("speak", help="announce VIPs to the BGPPeers of a MetalLB config")
    speak.add_argument("--config", required=True, type=pathlib.Path, help="MetalLB YAML (peers, pools, ads)")
    speak.add_argument("--node", required=True, help="this node's name (kubernetes.io/hostname label)")
    speak.add_argument("--router-id", required=True, type=ipaddress.IPv4Address, help="BGP identifier")
    speak.add_argument("--vip", action="append", default=[], help="IP or IP/LEN (every address); repeatable")
    speak.add_argument("--vips-file", type=pathlib.Path, help="one IP[/LEN] per line; re-read on SIGHUP")
    speak.add_argument("--label", action="append", default=[], help="node label KEY=VALUE; repeatable")
    speak.add_argument("--password", action="append", default=[], help="PEER=SECRET for a passwordSecret")
    speak.add_argument("--next-hop-v4", type=ipaddress.IPv4Address, help="default: our session address")
    speak.add_argument("--next-hop-v6", type=ipaddress.IPv6Address, help="needed for IPv6 over IPv4 sessions")
    speak.add_argument("--listen", type=int, metavar="PORT", help="also accept connections on PORT (179)")
    speak.add_argument("--passive", action="store_true", help="never connect; wait for the peers (needs --listen)")
    speak.add_argument("--status-file", type=pathlib.Path, help="write per-peer status JSON here")
    speak.set_defaults(func=_speak)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"{what} {item!r}: write KEY=VALUE")
        out[key] = value
    return out


def _expand(texts: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in texts:
        try:
            if "/" in text:
                network = ipaddress.ip_network(text, strict=False)
                if network.num_addresses > _MAX_EXPANSION:
                    raise errors.InvalidArgument(f"--vip {text}: more than {_MAX_EXPANSION} addresses")
                out.extend(network)
            else:
                out.append(ipaddress.ip_address(text))
        except ValueError as exc:
            raise errors.InvalidArgument(f"VIP {text!r}: {exc}") from exc
    return out


def _load(args: argparse.Namespace) -> tuple[lb_config.LbConfig, list[routes.Vip]]:
    texts = list(args.vip)
    try:
        config = lb_config.parse_yaml(args.config.read_text())
        if args.vips_file is not None:
            texts += [line.strip() for line in args.vips_file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    vips: list[routes.Vip] = []
    for ip in _expand(texts):
        pool = routes.pool_of(config, ip)
        if pool is None:
            raise errors.InvalidArgument(f"VIP {ip} is in no IPAddressPool of {args.config}")
        vips.append(routes.Vip(ip, pool))
    return config, vips


def _write_status(path: pathlib.Path, node: speaker.Speaker) -> str:
    text = json.dumps([dataclasses.asdict(s) for s in node.status()], sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


async def _run(args: argparse.Namespace) -> int:
    config, vips = _load(args)
    passwords = _pairs(args.password, "--password")
    node = speaker.Speaker(
        node=args.node,
        router_id=args.router_id,
        clock=clock.SystemClock(),
        labels=_pairs(args.label, "--label"),
        next_hop_v4=args.next_hop_v4,
        next_hop_v6=args.next_hop_v6,
        listen_port=args.listen,
        passive=args.passive,
    )
    await node.start()
    node.set_config(config.bgp_peers, passwords=passwords)
    node.set_advertisements(config, vips)
    _log.info("bgp speaker running %s", logs.kv(node=args.node, peers=len(node.status()), vips=len(vips)))
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    flags = {"done": False, "reload": False}

    def signal_(name: str) -> None:
        flags[name] = True
        wake.set()

    loop.add_signal_handler(signal.SIGTERM, signal_, "done")
    loop.add_signal_handler(signal.SIGINT, signal_, "done")
    loop.add_signal_handler(signal.SIGHUP, signal_, "reload")
    last = ""
    try:
        while not flags["done"]:
            if flags["reload"]:
                flags["reload"] = False
                try:
                    config, vips = _load(args)
                except errors.MetalhornError as exc:
                    _log.error("bgp reload failed %s", logs.kv(error=exc.message))
                else:
                    node.set_config(config.bgp_peers, passwords=passwords)
                    node.set_advertisements(config, vips)
                    _log.info("bgp reloaded %s", logs.kv(peers=len(node.status()), vips=len(vips)))
            if args.status_file is not None:
                text = json.dumps([dataclasses.asdict(s) for s in node.status()], sort_keys=True)
                if text != last:
                    last = _write_status(args.status_file, node)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await wake.wait()
            wake.clear()
    finally:
        await node.close()
    return 0


def _speak(args: argparse.Namespace) -> int:
    if args.passive and args.listen is None:
        raise errors.InvalidArgument("--passive needs --listen PORT")
    return runtime.run(_run(args))
