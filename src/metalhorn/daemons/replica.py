"""`metalhorn replica ...` commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("replica", help="replica commands")
    parser.set_defaults(func=lambda args: 1)
