"""`metalhorn engine serve` (one attached volume: engine + NBD export) and `metalhorn engine info`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from typing import TYPE_CHECKING, Any

from metalhorn.common import addresses, errors, logs, units
from metalhorn.daemons import runtime
from metalhorn.storage.engine import control

if TYPE_CHECKING:
    from metalhorn.storage.engine import service
from metalhorn.storage.wire import client as wire_client

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("engine", help="run or inspect the engine of one volume")
    commands = parser.add_subparsers(dest="engine_command", metavar="SUBCOMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a volume replicated over replica servers through a frontend",
        description="Connect to the replicas, choose the ones with the newest data, and export the volume.",
    )
    serve.add_argument("volume", metavar="VOLUME", help="volume name; also the NBD export name")
    serve.add_argument("--size", required=True, help="volume size, e.g. 10G; must match every replica")
    serve.add_argument(
        "--replica",
        dest="replicas",
        action="append",
        required=True,
        metavar="ADDR",
        help="replica server tcp://HOST:PORT, HOST:PORT or unix:PATH (repeat for each replica)",
    )
    serve.add_argument(
        "--frontend",
        choices=["nbd", "none"],
        default="nbd",
        help="how the volume is exported: nbd, or none for maintenance mode (no I/O; e.g. snapshot revert)",
    )
    serve.add_argument("--listen", help="frontend address HOST:PORT or unix:PATH (needed unless --frontend none)")
    serve.add_argument("--control", default=None, help="control endpoint unix:PATH or HOST:PORT (for engine info)")
    serve.add_argument(
        "--replica-timeout",
        type=float,
        default=wire_client.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"a replica that does not answer a request in time goes ERR (default {wire_client.DEFAULT_TIMEOUT:g})",
    )
    serve.add_argument(
        "--auto-rebuild",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rebuild an ERR replica as soon as its process answers again (default: on)",
    )
    serve.set_defaults(func=_serve)

    info = commands.add_parser("info", help="show the replicas of a running engine and their modes")
    info.add_argument("--control", required=True, help="the engine's control endpoint (its --control)")
    info.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")
    info.set_defaults(func=_info)

    import metalhorn.daemons.snapshot as snapshot_cli  # `engine expand` lives with the history commands

    snapshot_cli.register_expand(commands)

    from metalhorn.daemons import rebuild as rebuild_cli  # engine add-replica / rm-replica

    rebuild_cli.register(commands)

    parser.set_defaults(func=lambda _args: _usage(parser))


def _listen(args: argparse.Namespace) -> addresses.Address:
    if args.listen:
        return addresses.parse_address(args.listen, what="--listen")
    if args.frontend == "none":
        return addresses.parse_address("127.0.0.1:0", what="--listen")  # not used: no frontend starts
    raise errors.InvalidArgument("engine serve needs --listen HOST:PORT or unix:PATH for its frontend")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _serve(args: argparse.Namespace) -> int:
    # Imported here: it pulls in the NBD frontend, which `metalhorn --help` and `engine info` do not need.
    from metalhorn.storage.engine import service

    settings = service.EngineSettings(
        volume=args.volume,
        size=units.parse_size(args.size),
        replicas=tuple(args.replicas),
        listen=_listen(args),
        control=addresses.parse_address(args.control, what="--control") if args.control else None,
        replica_timeout=args.replica_timeout,
        frontend=args.frontend,
        auto_rebuild=args.auto_rebuild,
    )
    return runtime.run(_serve_until_signalled(service.EngineService(settings)))


async def _serve_until_signalled(svc: service.EngineService) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await svc.start()
    settings = svc.settings
    log.info(
        "serving %s on %s %s",
        settings.volume,
        ", ".join(svc.listening),
        logs.kv(volume=settings.volume, control=settings.control or "-", replicas=len(settings.replicas)),
    )
    await stop.wait()
    log.info("%s", logs.kv(volume=settings.volume, event="stopping"))
    await svc.stop()
    log.info("%s", logs.kv(volume=settings.volume, event="stopped"))
    return 0


def _info(args: argparse.Namespace) -> int:
    info = runtime.run(control.request(args.control, {"op": "info"}))
    if args.output == "json":
        print(json.dumps(info, indent=2))
    else:
        print(render_info(info))
    return 0


def render_info(info: dict[str, Any]) -> str:
    """The human view: a header line and one row per replica."""
    size = info.get("size")
    lines = [f"volume {info.get('volume')}  size {units.format_size(size) if isinstance(size, int) else size}"]
    rows = [("REPLICA", "MODE", "REASON")]
    rows += [(str(r.get("address")), str(r.get("mode")), str(r.get("reason") or "")) for r in info.get("replicas", [])]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for address, mode, reason in rows:
        lines.append(f"{address:<{widths[0]}}  {mode:<{widths[1]}}  {reason}".rstrip())
    counters = info.get("counters") or {}
    if counters:
        get = counters.get
        lines.append(
            f"reads {get('reads', 0)} ({units.format_size(get('read_bytes', 0))})  "
            f"writes {get('writes', 0)} ({units.format_size(get('write_bytes', 0))})  "
            f"flushes {get('flushes', 0)}  errors {get('errors', 0)}"
        )
    from metalhorn.daemons import rebuild as rebuild_cli

    lines += [rebuild_cli.render_progress(progress) for progress in info.get("rebuilds") or []]
    return "\n".join(lines)
