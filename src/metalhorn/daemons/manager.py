"""`metalhorn manager`: the REST API, the store and the controllers in one process.

    metalhorn manager --store sqlite:///var/lib/metalhorn/manager/metalhorn.db --listen 127.0.0.1:9500

The bearer token is generated at first start into STATE_DIR/token (mode 0600; STATE_DIR defaults to the
directory of the SQLite file). With --listen HOST:0 the OS picks the port; the URL is printed and written to
STATE_DIR/url either way. SIGTERM/SIGINT stop it cleanly; agents keep their replica and engine processes
running meanwhile, so restarting the manager does not disturb any I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from metalhorn.common import addresses, errors, logs
from metalhorn.common import clock as clock_mod
from metalhorn.control import manager as manager_mod
from metalhorn.control.api import app as app_mod
from metalhorn.control.api import auth
from metalhorn.control.store import base
from metalhorn.daemons import runtime

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9500"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "manager",
        help="run the manager: REST API, store and controllers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", required=True, help="store URL: sqlite:///PATH (PATH absolute)")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"API address HOST:PORT (default {DEFAULT_LISTEN})")
    parser.add_argument(
        "--state-dir", type=pathlib.Path, default=None, help="where the token lives (default: the store's directory)"
    )
    parser.set_defaults(func=run)


def state_dir_for(store_url: str, state_dir: pathlib.Path | None) -> pathlib.Path:
    if state_dir is not None:
        return state_dir
    if store_url.startswith("sqlite://") and len(store_url) > len("sqlite://"):
        return pathlib.Path(store_url[len("sqlite://") :]).parent
    raise errors.InvalidArgument("--state-dir is needed when the store is not a SQLite file")


def run(args: argparse.Namespace) -> int:
    listen = addresses.parse_address(args.listen, what="--listen")
    if listen.is_unix:
        raise errors.InvalidArgument("--listen must be HOST:PORT; the manager serves TCP")
    state_dir = state_dir_for(args.store, args.state_dir)
    return runtime.run(serve(store_url=args.store, listen=listen, state_dir=state_dir))


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling (it re-raises the signal after shutdown); we stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(listen: addresses.Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise errors.InvalidArgument(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return sock


async def serve(*, store_url: str, listen: addresses.Address, state_dir: pathlib.Path) -> int:
    clock = clock_mod.SystemClock()
    token = auth.load_or_create(state_dir / "token")
    store = base.open_store(store_url, clock=clock)
    sock = bind(listen)
    try:
        manager = manager_mod.Manager(store=store, clock=clock, token=token)
        app = app_mod.create_app(manager.context)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        server = _Server(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _stop, server)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        (state_dir / "url").write_text(url + "\n")
        manager.start()
        print(f"metalhorn manager: API {url} (token in {state_dir / 'token'})", flush=True)
        log.info("manager listening %s", logs.kv(url=url, store=store_url, state_dir=state_dir))
        try:
            await server.serve(sockets=[sock])
        finally:
            await manager.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    finally:
        sock.close()
        store.close()
    log.info("manager stopped")
    return 0


def _stop(server: uvicorn.Server) -> None:
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True
    print("metalhorn manager: stopping", file=sys.stderr, flush=True)
