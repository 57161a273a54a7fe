"""`metalhorn apply -f` / `delete -f` (MetalLB YAML and Kubernetes-shaped Services) and `metalhorn lb
pools|services|get|config` through the manager's REST API.

Files are read here (multi-document YAML, ``-`` for stdin) and sent whole in one request, so the manager
validates the complete result before storing anything: a file with one bad object changes nothing. The
renderers are pure functions of the API's JSON, pinned by golden tests.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from metalhorn.common import errors
from metalhorn.control.cli import common, output
from metalhorn.lb import config, fields


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apply = sub.add_parser(
        "apply",
        help="apply MetalLB configuration and LoadBalancer Services from YAML files",
        description="Create or update MetalLB objects (IPAddressPool, L2Advertisement, BGPAdvertisement, "
        "Community, BGPPeer, BFDProfile) and `kind: Service` objects (type LoadBalancer, plus `endpoints`). "
        "The whole resulting configuration is validated first; if anything is wrong nothing changes.",
    )
    _file_options(apply)
    apply.add_argument("--dry-run", action="store_true", help="validate only; change nothing")
    common.add_client_options(apply)
    apply.set_defaults(func=_apply)

    delete = sub.add_parser("delete", help="delete the MetalLB objects and Services named in YAML files")
    _file_options(delete)
    delete.add_argument("--ignore-not-found", action="store_true", help="exit 0 even if some objects do not exist")
    delete.add_argument("--dry-run", action="store_true", help="validate only; change nothing")
    common.add_client_options(delete)
    delete.set_defaults(func=_delete)

    lb = sub.add_parser("lb", help="LoadBalancer pools and services: IPs, pools, announcements, pending reasons")
    lb.set_defaults(func=lambda _args: _usage(lb))
    commands = lb.add_subparsers(dest="lb_command", metavar="SUBCOMMAND")
    pools = commands.add_parser("pools", help="address pools: assigned / total addresses, per family")
    common.add_client_options(pools)
    pools.set_defaults(func=_pools)
    services = commands.add_parser("services", help="services: IPs, pool, announcing node or BGP peers, reason")
    common.add_client_options(services)
    services.set_defaults(func=_services)
    get = commands.add_parser("get", help="one service in detail, with its events")
    get.add_argument("service", metavar="NAMESPACE/NAME", help="e.g. default/web (namespace default if omitted)")
    common.add_client_options(get)
    get.set_defaults(func=_get)
    peers = commands.add_parser("peers", help="BGP sessions per node and peer: state, prefixes advertised")
    common.add_client_options(peers)
    peers.set_defaults(func=_peers)
    cfg = commands.add_parser("config", help="the applied MetalLB documents (YAML by default)")
    common.add_client_options(cfg)
    cfg.set_defaults(func=_config, output="yaml")


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML file (multi-document; '-' reads stdin); repeat for more files",
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# -- reading files ------------------------------------------------------------------------------------------------


def load_files(paths: Sequence[str]) -> list[object]:
    """Every document of every file, in order; YAML errors name the file, line and column."""
    documents: list[object] = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise errors.InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            docs = config.load_yaml(text)
        except fields.InvalidConfig as exc:
            raise errors.InvalidArgument(f"{path}: {exc.message}") from exc
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                documents.extend(doc["items"])  # `kubectl get -o yaml` output
            else:
                documents.append(doc)
    if not documents:
        raise errors.InvalidArgument(f"no documents in {', '.join(paths)}")
    return documents


# -- commands -----------------------------------------------------------------------------------------------------


def _send(args: argparse.Namespace, path: str) -> dict[str, Any]:
    body = {"documents": load_files(args.filename), "dry_run": bool(args.dry_run)}
    with common.connect(args) as api:
        answer = api.request("POST", path, body=body)
    return dict(answer or {})


def _apply(args: argparse.Namespace) -> int:
    answer = _send(args, "/v1/lb/apply")
    common.emit(args, answer, render_results)
    return 0


def _delete(args: argparse.Namespace) -> int:
    answer = _send(args, "/v1/lb/delete")
    common.emit(args, answer, render_results)
    missing = [r for r in answer.get("results") or [] if r.get("action") == "not found"]
    return 1 if missing and not args.ignore_not_found else 0


def _pools(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        items = api.request("GET", "/v1/lb/pools")["items"]
    common.emit(args, items, pool_table)
    return 0


def _services(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        items = api.request("GET", "/v1/lb/services")["items"]
    common.emit(args, items, service_table)
    return 0


def _peers(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        items = api.request("GET", "/v1/lb/peers")["items"]
    common.emit(args, items, peer_table)
    return 0


def _get(args: argparse.Namespace) -> int:
    namespace, _, name = str(args.service).rpartition("/")
    with common.connect(args) as api:
        record = api.request("GET", f"/v1/lb/services/{namespace or 'default'}/{name}")
    common.emit(args, record, service_detail)
    return 0


def _config(args: argparse.Namespace) -> int:
    with common.connect(args) as api:
        answer = api.request("GET", "/v1/lb/config")
    common.emit(args, answer.get("documents") or [], lambda docs: output.structured(docs, "yaml"))
    return 0


# -- rendering (pure) ---------------------------------------------------------------------------------------------


def render_results(answer: Mapping[str, Any]) -> str:
    """kubectl-like: one line per object, `Kind namespace/name action`."""
    suffix = " (dry run)" if answer.get("dry_run") else ""
    lines = [
        f"{r.get('kind')} {r.get('namespace')}/{r.get('name')} {r.get('action')}{suffix}"
        for r in answer.get("results") or []
    ]
    return "\n".join(lines) or "nothing to do"


def count(n: int) -> str:
    """Exact up to a million; beyond, a power of two as 2^k (IPv6 pools), else 1.2e+20."""
    if n < 1_000_000:
        return str(n)
    if n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return f"{n:.1e}"


def _fraction(assigned: Any, total: Any) -> str:
    if not total:
        return ""
    return f"{int(assigned or 0)}/{count(int(total))}"


def pool_table(pools: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            p.get("name"),
            list(p.get("addresses") or []),
            "yes" if p.get("auto_assign", True) else "no",
            "yes" if p.get("avoid_buggy_ips") else "no",
            _fraction(p.get("assigned"), p.get("total")),
            _fraction(p.get("assigned_v4"), p.get("total_v4")),
            _fraction(p.get("assigned_v6"), p.get("total_v6")),
        ]
        for p in sorted(pools, key=lambda p: str(p.get("name")))
    ]
    return output.table(("POOL", "ADDRESSES", "AUTO-ASSIGN", "AVOID-BUGGY", "ASSIGNED", "IPV4", "IPV6"), rows)


def _ports(document: Mapping[str, Any]) -> list[str]:
    spec = document.get("spec") if isinstance(document.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    return [f"{p.get('port')}/{p.get('protocol') or 'TCP'}" for p in spec.get("ports") or [] if isinstance(p, Mapping)]


def _announcers(status: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    nodes: list[str] = []
    peers: list[str] = []
    for a in status.get("announced_by") or []:
        if a.get("mode") == "l2":
            nodes.append(str(a.get("node")))
        else:
            peers.extend(f"{a.get('node')}/{peer}" for peer in a.get("peers") or [])
    return nodes, peers


def service_table(services: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for svc in sorted(services, key=lambda s: str(s.get("name"))):
        status = svc.get("status") or {}
        nodes, peers = _announcers(status)
        rows.append(
            [
                svc.get("name"),
                status.get("state") or "pending",
                list(status.get("ingress") or []),
                status.get("pool"),
                _ports((svc.get("spec") or {}).get("document") or {}),
                nodes,
                peers,
                status.get("reason"),
            ]
        )
    return output.table(("SERVICE", "STATE", "IPS", "POOL", "PORTS", "L2-NODE", "BGP-PEERS", "REASON"), rows)


def _since(established_at: Any, now: float) -> str:
    try:
        seconds = max(0, int(now - float(established_at)))
    except (TypeError, ValueError):
        return ""
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def peer_table(sessions: Sequence[Mapping[str, Any]], *, now: float | None = None) -> str:
    """One row per node and BGP peer; a stale report (agent gone) shows its state as `unknown`."""
    now = datetime.datetime.now(tz=datetime.UTC).timestamp() if now is None else now
    rows = []
    for s in sorted(sessions, key=lambda s: (str(s.get("node")), str(s.get("peer")))):
        stale = bool(s.get("stale"))
        state = "unknown (stale report)" if stale else s.get("state")
        up = s.get("state") == "Established" and not stale
        rows.append(
            [
                s.get("node"),
                s.get("peer"),
                s.get("address"),
                state,
                s.get("prefixes_advertised") if not stale else None,
                _since(s.get("established_at"), now) if up else None,
                s.get("last_error"),
            ]
        )
    return output.table(("NODE", "PEER", "ADDRESS", "STATE", "PREFIXES", "UP", "LAST-ERROR"), rows)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    return str(value) if value not in (None, "") else "-"


def _time(value: Any) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(float(value), tz=datetime.UTC)
    except (TypeError, ValueError, OverflowError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def service_detail(svc: Mapping[str, Any]) -> str:
    status = svc.get("status") or {}
    document = (svc.get("spec") or {}).get("document") or {}
    endpoints = [e if isinstance(e, str) else f"{e.get('ip')}:{e.get('port')}" for e in document.get("endpoints") or []]
    nodes, peers = _announcers(status)
    rows = [
        ("service", svc.get("name")),
        ("state", status.get("state") or "pending"),
        ("ips", list(status.get("ingress") or [])),
        ("pool", status.get("pool")),
        ("ports", _ports(document)),
        ("endpoints", endpoints),
        ("l2 node", nodes),
        ("bgp peers", peers),
        ("reason", status.get("reason")),
    ]
    width = max(len(key) for key, _ in rows) + 1
    lines = [f"{(key + ':').ljust(width)}  {_cell(value)}" for key, value in rows]
    events = status.get("events") or []
    if events:
        lines.append("")
        lines.append(output.table(("TIME", "EVENT"), [[_time(e.get("time")), e.get("message")] for e in events]))
    return "\n".join(lines)
