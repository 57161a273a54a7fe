"""`metalhorn up`: placeholder until the data path lands (filled in by the storage data path work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("up", help="start a local metalhorn on this machine")
    parser.set_defaults(func=lambda args: 1)
