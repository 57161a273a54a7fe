"""`metalhorn node ls|get` and `metalhorn disk add NODE PATH [--tags] | disk ls` through the manager's REST API."""

from __future__ import annotations

import argparse

from metalhorn.control.cli import common, output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="list the nodes of the cluster and their disks")
    node.set_defaults(func=lambda _args: _usage(node))
    node_commands = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    ls = node_commands.add_parser("ls", help="list nodes: ready, address, zone, tags, disk space")
    common.add_client_options(ls)
    ls.set_defaults(func=_node_ls)
    get = node_commands.add_parser("get", help="show one node and its disks")
    get.add_argument("name", metavar="NODE")
    common.add_client_options(get)
    get.set_defaults(func=_node_get)

    disk = sub.add_parser("disk", help="add disks (data paths) to nodes")
    disk.set_defaults(func=lambda _args: _usage(disk))
    disk_commands = disk.add_subparsers(dest="disk_command", metavar="SUBCOMMAND")
    add = disk_commands.add_parser("add", help="add a data path on a node for replicas")
    add.add_argument("node", metavar="NODE")
    add.add_argument("path", metavar="PATH", help="absolute directory on that node")
    add.add_argument("--tags", default=None, help="disk tags, comma separated (for volume --disk-selector)")
    common.add_client_options(add)
    add.set_defaults(func=_disk_add)
    dls = disk_commands.add_parser("ls", help="list the disks of every node")
    common.add_client_options(dls)
    dls.set_defaults(func=_disk_ls)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _node_ls(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        nodes = api.list_nodes()
    common.emit(args, nodes, output.node_table)
    return 0


def _node_get(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        node = api.get_node(args.name)
    common.emit(args, node, lambda n: output.node_table([n]) + "\n\n" + output.disk_table([n]))
    return 0


def _disk_add(args: argparse.Namespace) -> int:
    tags = None if args.tags is None else [t.strip() for t in args.tags.split(",") if t.strip()]
    with common.connect(args) as api:
        node = api.add_disk(args.node, path=args.path, tags=tags)
    common.emit(args, node, lambda n: output.disk_table([n]))
    return 0


def _disk_ls(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        nodes = api.list_nodes()
    common.emit(args, nodes, output.disk_table)
    return 0
