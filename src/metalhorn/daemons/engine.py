"""`metalhorn engine ...` commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("engine", help="engine commands")
    parser.set_defaults(func=lambda args: 1)
