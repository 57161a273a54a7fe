"""`metalhorn replica serve DIR --size SIZE --listen ADDR` and `metalhorn replica inspect DIR`.

Thin on purpose: the store, server and inspection live in metalhorn.storage.replica.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from metalhorn.common import addresses, units
from metalhorn.common.logs import kv
from metalhorn.daemons import runtime
from metalhorn.storage.replica import inspect
from metalhorn.storage.replica.server import ReplicaServer
from metalhorn.storage.replica.store import ReplicaStore

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("replica", help="serve or inspect a replica directory")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="replica_command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve a replica directory over the replica protocol")
    serve.add_argument("dir", metavar="DIR", help="replica directory (created when missing)")
    serve.add_argument("--size", help="volume size, e.g. 10G; needed to create a replica, checked otherwise")
    serve.add_argument("--listen", required=True, help="HOST:PORT, [V6]:PORT or unix:PATH")
    serve.set_defaults(func=_serve)

    show = commands.add_parser("inspect", help="show a replica's metadata, chain and revision")
    show.add_argument("dir", metavar="DIR")
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.add_argument("--checksum", action="store_true", help="add the SHA-256 of the volume content")
    show.set_defaults(func=_inspect)


def _serve(args: argparse.Namespace) -> int:
    size = units.parse_size(args.size) if args.size else None
    listen = addresses.parse_address(args.listen, what="--listen")
    store = ReplicaStore.open(args.dir, size=size)  # CorruptMetadata etc. -> message and exit 1 in main
    try:
        runtime.run(_run_server(store, listen))
    finally:
        store.close()  # flush, Dirty=false
    return 0


async def _run_server(store: ReplicaStore, listen: addresses.Address) -> None:
    server = ReplicaServer(store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        address = await server.start(listen)
        print(f"listening on {address}", flush=True)
        await stop.wait()
        log.info("replica stopping %s", kv(dir=store.directory))
    finally:
        await server.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _inspect(args: argparse.Namespace) -> int:
    report = inspect.describe(args.dir, checksum=args.checksum)
    if args.output == "json":
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(inspect.render_text(report))
    return 0
