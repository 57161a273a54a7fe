"""`metalhorn` command line: builds the argument tree from each command module and runs the chosen one."""

from __future__ import annotations

import argparse
import importlib
import sys

from metalhorn import __version__
from metalhorn.common import errors

# Each module exposes register(subparsers); a registered command sets `func(args) -> int` as its default.
_COMMAND_MODULES = (
    "metalhorn.daemons.up",
    "metalhorn.daemons.replica",
    "metalhorn.daemons.engine",
    "metalhorn.daemons.bgp",
    "metalhorn.daemons.snapshot",
    "metalhorn.daemons.manager",
    "metalhorn.daemons.agent",
    "metalhorn.control.cli.volume",
    "metalhorn.control.cli.node",
    "metalhorn.daemons.l2",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metalhorn",
        description="Replicated block volumes and LoadBalancer IPs for bare-metal clusters.",
    )
    parser.add_argument("--version", action="version", version=f"metalhorn {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
