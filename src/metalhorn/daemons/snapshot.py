"""`metalhorn snapshot ...` and `metalhorn engine expand`: a volume's history through its engine's control endpoint.

    snapshot create VOL [NAME] --control ADDR [--label k=v ...]
    snapshot ls VOL --control ADDR [-o json]           the tree: parent, children, size, created, user, labels
    snapshot rm VOL NAME --control ADDR                marks it removed; purge frees the space
    snapshot purge VOL --control ADDR                  folds removed and system snapshots into their children
    snapshot revert VOL NAME --control ADDR            engine in maintenance mode (engine serve --frontend none)
    snapshot revert VOL NAME --replica-dir DIR ...     or on the stopped replicas' directories
    snapshot verify VOL --control ADDR                 re-hash snapshot files; a changed replica goes ERR
    snapshot clone VOL NAME --to DIR ... (--control ADDR | --from DIR)
    engine expand --control ADDR SIZE                  online; NBD clients see the new size when they reconnect

Revert is offline, as in Longhorn (which needs the volume attached in maintenance mode): the engine refuses it
while a frontend serves I/O and says how to do it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from metalhorn.common import errors, units
from metalhorn.daemons import runtime
from metalhorn.storage.engine import control

LONG_TIMEOUT = 3600.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("snapshot", help="create, list, remove, purge, revert, verify and clone snapshots")
    commands = parser.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")

    def volume_cmd(name: str, help_text: str, *, control_required: bool = True) -> argparse.ArgumentParser:
        cmd = commands.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("volume", metavar="VOL", help="volume name (checked against the engine's)")
        cmd.add_argument("--control", required=control_required, help="the engine's control endpoint (its --control)")
        return cmd

    create = volume_cmd("create", "take a snapshot of a running volume (consistent across its replicas)")
    create.add_argument("name", metavar="NAME", nargs="?", help="snapshot name (default: a UUID)")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable)")
    create.set_defaults(func=_create)

    ls = volume_cmd("ls", "list the snapshot tree")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    ls.set_defaults(func=_ls)

    rm = volume_cmd("rm", "mark a snapshot removed (purge frees its space)")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(func=_rm)

    purge = volume_cmd("purge", "fold removed and system snapshots into their children, online")
    purge.set_defaults(func=_purge)

    revert = volume_cmd("revert", "revert the volume to a snapshot (offline)", control_required=False)
    revert.add_argument("name", metavar="NAME")
    revert.add_argument(
        "--replica-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="revert these stopped replica directories instead of asking an engine (repeat for each replica)",
    )
    revert.set_defaults(func=_revert)

    verify = volume_cmd("verify", "re-hash snapshot files; a replica whose files changed goes ERR")
    verify.add_argument("-o", "--output", choices=("table", "json"), default="table")
    verify.set_defaults(func=_verify)

    clone = volume_cmd("clone", "create a new volume's replica directories from a snapshot", control_required=False)
    clone.add_argument("name", metavar="NAME", help="the snapshot to clone")
    clone.add_argument("--to", action="append", required=True, metavar="DIR", help="new replica directory (repeat)")
    clone.add_argument("--from", dest="source", metavar="DIR", help="a replica directory of VOL (else via --control)")
    clone.set_defaults(func=_clone)

    parser.set_defaults(func=lambda _args: _usage(parser))


def register_expand(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `engine expand` to the engine command (called from daemons/engine.py)."""
    expand = commands.add_parser(
        "expand",
        help="grow a running volume (engine and every replica); shrinking is refused",
        description="Grow the volume online. NBD clients see the new size when they reconnect.",
    )
    expand.add_argument("size", metavar="SIZE", help="new size, e.g. 20G")
    expand.add_argument("--control", required=True, help="the engine's control endpoint (its --control)")
    expand.set_defaults(func=_expand)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _call(args: argparse.Namespace, op: str, timeout: float = 60.0, **fields: Any) -> dict[str, Any]:
    return runtime.run(control.request(args.control, {"op": op, "volume": args.volume, **fields}, timeout=timeout))


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"--label {pair!r}: use KEY=VALUE")
        labels[key] = value
    return labels


def _create(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"labels": _labels(args.label)}
    if args.name:
        fields["name"] = args.name
    result = _call(args, "snapshot.create", **fields)
    print(result["name"])
    return 0


def _ls(args: argparse.Namespace) -> int:
    result = _call(args, "snapshot.ls")
    if args.output == "json":
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_tree(result.get("snapshots", [])))
    return 0


def render_tree(entries: list[dict[str, Any]]) -> str:
    """The snapshot tree, roots first, children indented under their parent."""
    by_name = {e["name"]: e for e in entries}
    roots = [e for e in entries if not e.get("parent") or e["parent"] not in by_name]
    rows = [("NAME", "SIZE", "CREATED", "USER", "REMOVED", "LABELS")]

    def walk(entry: dict[str, Any], depth: int) -> None:
        label = ",".join(f"{k}={v}" for k, v in sorted((entry.get("labels") or {}).items())) or "-"
        name = ("  " * depth) + ("└─ " if depth else "") + entry["name"] + (" (head)" if entry.get("head") else "")
        size = int(entry.get("size", 0))
        rows.append(
            (
                name,
                units.format_size(size) if size else "0B",
                entry.get("created") or "-",
                "yes" if entry.get("user_created") else "no",
                "yes" if entry.get("removed") else "no",
                label,
            )
        )
        for child in entry.get("children", []):
            if child in by_name:
                walk(by_name[child], depth + 1)

    for root in roots:
        walk(root, 0)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows)


def _rm(args: argparse.Namespace) -> int:
    _call(args, "snapshot.rm", name=args.name)
    return 0


def _purge(args: argparse.Namespace) -> int:
    result = _call(args, "snapshot.purge", timeout=LONG_TIMEOUT)
    for name in result.get("purged", []):
        print(f"purged {name}")
    return 0


def _revert(args: argparse.Namespace) -> int:
    if args.replica_dir:
        from metalhorn.storage.replica import snapshots as replica_snapshots

        for directory in args.replica_dir:
            head = replica_snapshots.revert_directory(directory, args.name)
            print(f"{directory}: reverted to {args.name} (new head {head})")
        return 0
    if not args.control:
        raise errors.InvalidArgument("give --control ADDR (engine in maintenance mode) or --replica-dir DIR ...")
    _call(args, "snapshot.revert", name=args.name)
    print(f"reverted {args.volume} to {args.name}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    result = _call(args, "snapshot.verify", timeout=LONG_TIMEOUT)
    if args.output == "json":
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for address, report in sorted(result.get("replicas", {}).items()):
            files = report.get("files", {})
            state = result.get("corrupt", {}).get(address) or report.get("error") or f"ok ({len(files)} snapshots)"
            print(f"{address}  {state}")
        for address in result.get("set_err", []):
            print(f"{address} set to ERR")
    return 1 if result.get("corrupt") else 0


def _clone(args: argparse.Namespace) -> int:
    from metalhorn.storage.replica import snapshots as replica_snapshots

    source = args.source or runtime.run(_source_dir(args))
    snap = replica_snapshots.clone(source, args.name, args.to, origin=f"{args.volume}/{args.name}")
    for target in args.to:
        print(f"{target}: {snap}")
    return 0


async def _source_dir(args: argparse.Namespace) -> str:
    """A local directory of an RW replica of the volume (the clone reads its immutable snapshot files)."""
    if not args.control:
        raise errors.InvalidArgument("give --from DIR (a replica directory of the volume) or --control ADDR")
    from metalhorn.storage.wire import client as wire_client

    info = await control.request(args.control, {"op": "info"})
    if info.get("volume") != args.volume:
        raise errors.InvalidArgument(f"the engine at {args.control} serves {info.get('volume')!r}, not {args.volume!r}")
    for replica in info.get("replicas", []):
        if replica.get("mode") != "RW":
            continue
        client = await wire_client.ReplicaClient.connect(str(replica["address"]))
        try:
            directory = (await client.control({"op": "info"})).get("dir")
        finally:
            client.close()
        if isinstance(directory, str) and directory:
            return directory
    raise errors.Unavailable(f"no RW replica of {args.volume} reported a directory; use --from DIR")


def _expand(args: argparse.Namespace) -> int:
    size = units.parse_size(args.size)
    result = runtime.run(control.request(args.control, {"op": "expand", "size": size}, timeout=LONG_TIMEOUT))
    print(f"expanded from {units.format_size(result['previous'])} to {units.format_size(result['size'])}")
    return 0
