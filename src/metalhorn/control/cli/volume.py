"""`metalhorn volume create|ls|get|delete|attach|detach|expand` through the manager's REST API.

The API records intent and answers at once (202); `--wait` polls the volume until the intent is reached and
draws a progress bar for rebuilds and expansion on a terminal.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from metalhorn.common import errors, units
from metalhorn.control.cli import common, output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("volume", help="create, attach and inspect replicated volumes (through the manager)")
    parser.set_defaults(func=lambda _args: _usage(parser))
    commands = parser.add_subparsers(dest="volume_command", metavar="SUBCOMMAND")

    create = commands.add_parser("create", help="create a replicated volume")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--size", required=True, help="size, e.g. 10G (binary units) or 10GB (decimal)")
    create.add_argument("--replicas", type=int, default=None, help="number of replicas (default 3)")
    create.add_argument("--node-selector", default=None, help="node tags the replicas need, comma separated")
    create.add_argument("--disk-selector", default=None, help="disk tags the replicas need, comma separated")
    create.add_argument("--data-locality", choices=("disabled", "best-effort", "strict-local"), default=None)
    create.add_argument("--replica-anti-affinity", choices=("hard", "soft"), default=None)
    create.add_argument("--zone-anti-affinity", choices=("hard", "soft"), default=None)
    _wait_options(create, "until every replica is healthy")
    common.add_client_options(create)
    create.set_defaults(func=_create)

    ls = commands.add_parser("ls", help="list volumes")
    common.add_client_options(ls)
    ls.set_defaults(func=_ls)

    get = commands.add_parser("get", help="show one volume: state, replicas, rebuild progress, scheduling reasons")
    get.add_argument("name", metavar="NAME")
    _wait_options(get, "until the volume is healthy with no rebuild or expansion running")
    common.add_client_options(get)
    get.set_defaults(func=_get)

    delete = commands.add_parser("delete", help="delete a volume and its replicas (detach it first)")
    delete.add_argument("name", metavar="NAME")
    _wait_options(delete, "until the volume is gone")
    common.add_client_options(delete)
    delete.set_defaults(func=_delete)

    attach = commands.add_parser("attach", help="start the volume's engine and NBD export on a node")
    attach.add_argument("name", metavar="NAME")
    attach.add_argument("--node", default=None, help="node to attach on (default: a ready node with local data)")
    _wait_options(attach, "until the NBD endpoint serves")
    common.add_client_options(attach)
    attach.set_defaults(func=_attach)

    detach = commands.add_parser("detach", help="stop the volume's engine and export")
    detach.add_argument("name", metavar="NAME")
    _wait_options(detach, "until detached")
    common.add_client_options(detach)
    detach.set_defaults(func=_detach)

    expand = commands.add_parser("expand", help="grow a volume")
    expand.add_argument("name", metavar="NAME")
    expand.add_argument("--size", required=True, help="the new size, e.g. 20G; larger than the current one")
    _wait_options(expand, "until every replica has the new size")
    common.add_client_options(expand)
    expand.set_defaults(func=_expand)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _wait_options(parser: argparse.ArgumentParser, until: str) -> None:
    parser.add_argument("--wait", action="store_true", help=f"wait {until} (progress bar on a terminal)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting after SECONDS (default 300)")


def _tags(text: str | None) -> list[str] | None:
    return None if text is None else [tag.strip() for tag in text.split(",") if tag.strip()]


def _size_arg(text: str) -> str | int:
    """Sizes go to the API as the user wrote them (the API validates and names the field); only "abc" and
    friends are refused here first, with the same message the API would give."""
    units.parse_size(text)
    return text


def _status(record: Mapping[str, Any]) -> Mapping[str, Any]:
    status = record.get("status")
    return status if isinstance(status, Mapping) else {}


def _rebuild_line(record: Mapping[str, Any]) -> str | None:
    rebuild = _status(record).get("rebuild")
    if isinstance(rebuild, Mapping):
        bar = output.progress_bar(int(rebuild.get("done") or 0), int(rebuild.get("total") or 0))
        return f"rebuilding {rebuild.get('replica')} {bar}"
    return f"{record.get('name')}: {_status(record).get('state')} {_status(record).get('robustness')}"


def _healthy(record: Mapping[str, Any]) -> bool:
    return _status(record).get("robustness") == "healthy"


def _create(args: argparse.Namespace) -> int:
    if args.replicas is not None and args.replicas < 1:
        raise errors.InvalidArgument(f"--replicas must be at least 1, got {args.replicas}")
    with common.connect(args) as api:
        record = api.create_volume(
            name=args.name,
            size=_size_arg(args.size),
            replicas=args.replicas,
            node_selector=_tags(args.node_selector),
            disk_selector=_tags(args.disk_selector),
            data_locality=args.data_locality,
            replica_anti_affinity=args.replica_anti_affinity,
            zone_anti_affinity=args.zone_anti_affinity,
        )
        if args.wait:
            record = dict(
                common.wait_for(
                    lambda: api.get_volume(args.name),
                    _healthy,
                    what=f"volume {args.name} to be healthy",
                    timeout=args.timeout,
                    progress=_rebuild_line,
                )
            )
    common.emit(args, record, output.volume_detail)
    return 0


def _ls(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        volumes = api.list_volumes()
    common.emit(args, volumes, output.volume_table)
    return 0


def _settled(record: Mapping[str, Any]) -> bool:
    status = _status(record)
    return _healthy(record) and not status.get("rebuild") and not status.get("expansion")


def _progress_line(record: Mapping[str, Any]) -> str | None:
    """The running rebuild's or expansion's bar, else the volume's state."""
    grow = _status(record).get("expansion")
    if isinstance(grow, Mapping):
        return f"expanding {output.expansion_line(grow)}"
    return _rebuild_line(record)


def _get(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        if args.wait:
            record = dict(
                common.wait_for(
                    lambda: api.get_volume(args.name),
                    _settled,
                    what=f"volume {args.name} to be healthy with no rebuild or expansion running",
                    timeout=args.timeout,
                    progress=_progress_line,
                )
            )
        else:
            record = api.get_volume(args.name)
    common.emit(args, record, output.volume_detail)
    return 0


def _delete(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        api.delete_volume(args.name)
        if args.wait:

            def gone() -> Mapping[str, Any]:
                try:
                    return api.get_volume(args.name)
                except errors.NotFound:
                    return {"gone": True}

            common.wait_for(
                gone, lambda r: bool(r.get("gone")), what=f"volume {args.name} to be deleted", timeout=args.timeout
            )
    if args.output == "table":
        print(f"volume {args.name} deleted" if args.wait else f"volume {args.name} is being deleted")
    else:
        common.emit(args, {"name": args.name, "deleted": True}, str)
    return 0


def _attach(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        record = api.attach_volume(args.name, node=args.node)
        if args.wait:
            record = dict(
                common.wait_for(
                    lambda: api.get_volume(args.name),
                    lambda r: _status(r).get("state") == "attached" and bool(_status(r).get("endpoint")),
                    what=f"volume {args.name} to be attached",
                    timeout=args.timeout,
                    progress=_rebuild_line,
                )
            )
    common.emit(args, record, output.volume_detail)
    return 0


def _detach(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        record = api.detach_volume(args.name)
        if args.wait:
            record = dict(
                common.wait_for(
                    lambda: api.get_volume(args.name),
                    lambda r: _status(r).get("state") == "detached",
                    what=f"volume {args.name} to be detached",
                    timeout=args.timeout,
                )
            )
    common.emit(args, record, output.volume_detail)
    return 0


def _expand(args: argparse.Namespace) -> int:
    size = units.parse_size(args.size)
    with common.connect(args) as api:
        record = api.expand_volume(args.name, size=args.size)
        if args.wait:

            def expanded(r: Mapping[str, Any]) -> bool:
                status = _status(r)
                return status.get("expansion") is None and status.get("size", size) == size

            record = dict(
                common.wait_for(
                    lambda: api.get_volume(args.name),
                    expanded,
                    what=f"volume {args.name} to reach {units.format_size(size)}",
                    timeout=args.timeout,
                    progress=_progress_line,
                )
            )
    common.emit(args, record, output.volume_detail)
    return 0
