"""`metalhorn` command line: builds the argument tree from each command module and runs the chosen one."""

from __future__ import annotations

import argparse
import importlib
import sys

from metalhorn import __version__
from metalhorn.common import errors

# Each module exposes register(subparsers); a registered command sets `func(args) -> int` as its default.
# The table maps each top-level command to the module that registers it, so a command imports only its own
# module: `metalhorn replica serve` must not pay for FastAPI and httpx at every process start.
_COMMANDS: dict[str, str] = {
    "up": "metalhorn.daemons.up",
    "manager": "metalhorn.daemons.manager",
    "agent": "metalhorn.daemons.agent",
    "volume": "metalhorn.control.cli.volume",
    "node": "metalhorn.control.cli.node",
    "disk": "metalhorn.control.cli.node",
    "snapshot": "metalhorn.daemons.snapshot",
    "replica": "metalhorn.daemons.replica",
    "engine": "metalhorn.daemons.engine",
    "bgp": "metalhorn.daemons.bgp",
    "l2": "metalhorn.daemons.l2",
    "apply": "metalhorn.control.cli.lb",
    "delete": "metalhorn.control.cli.lb",
    "lb": "metalhorn.control.cli.lb",
}
_COMMAND_MODULES = tuple(dict.fromkeys(_COMMANDS.values()))


def _modules_for(argv: list[str]) -> tuple[str, ...]:
    """The modules to import: the invoked command's own, or all of them for help and errors."""
    for arg in argv:
        if arg.startswith("-"):
            continue
        module = _COMMANDS.get(arg)
        return (module,) if module else _COMMAND_MODULES
    return _COMMAND_MODULES


def build_parser(modules: tuple[str, ...] = _COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metalhorn",
        description="Replicated block volumes and LoadBalancer IPs for bare-metal clusters.",
    )
    parser.add_argument("--version", action="version", version=f"metalhorn {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_modules_for(argv))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from metalhorn.common import logs

    logs.setup(args.log_level)
    try:
        return int(func(args))
    except errors.MetalhornError as exc:
        print(f"metalhorn: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
