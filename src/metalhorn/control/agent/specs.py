"""Pure translation of the manager's records into what the agent runs, and of an engine's replica set into the
control operations that converge it. No I/O: tested with plain values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from metalhorn.common import addresses, errors
from metalhorn.control.agent import instances

# Record names become file names: no separators, no dot-dot, bounded length.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes; keep a margin


def check_name(name: object, *, kind: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise errors.InvalidArgument(f"{kind} name {name!r} is not a safe file name")
    return name


def _spec(record: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = record.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _size(spec: Mapping[str, Any], what: str) -> int:
    size = spec.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise errors.InvalidArgument(f"{what}: spec.size must be a positive integer, got {size!r}")
    return size


def replica_dir(record: Mapping[str, Any], *, data_path: pathlib.Path, disks: Iterable[str]) -> pathlib.Path:
    """Where a replica's files live: spec.data_dir if it is inside one of this node's disks, else
    <disk>/replicas/<name> (the disk from spec.disk when known, else the data path)."""
    name = check_name(record.get("name"), kind="replica")
    spec = _spec(record)
    roots = [data_path.resolve(), *(pathlib.Path(d).resolve() for d in disks)]
    wanted = spec.get("data_dir")
    if isinstance(wanted, str) and wanted:
        path = pathlib.Path(wanted).resolve()
        if any(path.is_relative_to(root) and path != root for root in roots):
            return path
        raise errors.InvalidArgument(
            f"replica {name}: data_dir {wanted} is not inside a disk of this node ({', '.join(map(str, roots))})"
        )
    disk = spec.get("disk")
    root = pathlib.Path(disk).resolve() if isinstance(disk, str) and disk else data_path.resolve()
    if root not in roots:
        raise errors.InvalidArgument(f"replica {name}: disk {disk} is not a disk of this node")
    return root / "replicas" / name


def replica_spec(
    record: Mapping[str, Any],
    *,
    data_path: pathlib.Path,
    disks: Iterable[str],
    host: str,
    port: int,
    command: Sequence[str],
) -> instances.InstanceSpec:
    name = check_name(record.get("name"), kind="replica")
    spec = _spec(record)
    size = _size(spec, f"replica {name}")
    directory = replica_dir(record, data_path=data_path, disks=disks)
    listen = addresses.Address(host=host, port=port)
    return instances.InstanceSpec(
        name=name,
        kind="replica",
        args=(*command, "replica", "serve", str(directory), "--size", str(size), "--listen", str(listen)),
        listen=listen,
        log_path=data_path / "logs" / f"{name}.log",
        restart_key=(str(directory), size, port),
        run=spec.get("desired", "running") != "stopped",
    )


def control_path(data_path: pathlib.Path, name: str) -> str:
    path = str(data_path / "run" / f"{name}.sock")
    if len(path.encode()) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"/tmp/metalhorn-{digest}.sock"


def replica_addresses(record: Mapping[str, Any]) -> list[str]:
    spec = _spec(record)
    raw = spec.get("replica_addresses") or []
    return [normalize(a) for a in raw if isinstance(a, str) and a]


def normalize(address: str) -> str:
    """tcp://HOST:PORT as the engine is given it; unix:PATH unchanged."""
    parsed = addresses.parse_address(address, what="replica address")
    return str(parsed) if parsed.is_unix else f"tcp://{parsed}"


def engine_spec(
    record: Mapping[str, Any],
    *,
    data_path: pathlib.Path,
    host: str,
    port: int,
    command: Sequence[str],
) -> instances.InstanceSpec:
    name = check_name(record.get("name"), kind="engine")
    spec = _spec(record)
    volume = check_name(spec.get("volume"), kind="volume")
    size = _size(spec, f"engine {name}")
    listen = addresses.Address(host=host, port=port)
    wanted = spec.get("listen")
    if isinstance(wanted, str) and wanted:
        parsed = addresses.parse_address(wanted, what=f"engine {name} listen")
        if parsed.port:
            listen = parsed
    replicas = replica_addresses(record)
    args = [*command, "engine", "serve", volume, "--size", str(size)]
    for address in replicas:
        args += ["--replica", address]
    control = control_path(data_path, name)
    args += ["--frontend", "nbd", "--listen", str(listen), "--control", f"unix:{control}"]
    return instances.InstanceSpec(
        name=name,
        kind="engine",
        args=tuple(args),
        listen=listen,
        log_path=data_path / "logs" / f"{name}.log",
        restart_key=(volume, size, str(listen)),
        wait_for=tuple(addresses.parse_address(a) for a in replicas),
        # An engine with no replica to open cannot start; it waits (pending) until the manager names some.
        run=spec.get("desired", "running") != "stopped" and bool(replicas),
    )


def endpoint(spec: instances.InstanceSpec, volume: str) -> str:
    return f"nbd://{spec.listen}/{volume}"


@dataclasses.dataclass(frozen=True)
class ReplicaChanges:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def replica_changes(
    current: Sequence[Mapping[str, Any]], desired: Sequence[str], *, rebuilding: Iterable[str] = ()
) -> ReplicaChanges:
    """Control operations that bring a running engine's replicas (its `info`) to the desired addresses.

    Missing replicas are added (the engine rebuilds them; one already being rebuilt counts as present). A
    desired replica in ERR is left to the engine, which rebuilds it by itself once it answers again. Replicas no
    longer desired are removed -- but never while no desired replica is RW, so a bad wish cannot take the
    volume's last good copies away.
    """
    modes = {normalize(str(r.get("address"))): str(r.get("mode")) for r in current if r.get("address")}
    busy = {normalize(a) for a in rebuilding}
    wanted = [normalize(a) for a in desired]
    if not wanted:
        return ReplicaChanges()
    add = [a for a in wanted if a not in modes and a not in busy]
    desired_rw = any(modes.get(a) == "RW" for a in wanted)
    remove = [a for a, mode in modes.items() if a not in wanted and a not in busy and (desired_rw or mode != "RW")]
    return ReplicaChanges(add=tuple(add), remove=tuple(remove))


def rebuild_progress(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The running rebuild of an engine's `info` as the contract's {replica, done, total}, or None."""
    for item in info.get("rebuilds") or []:
        if isinstance(item, Mapping) and item.get("state") in ("starting", "copying"):
            return {
                "replica": item.get("address"),
                "done": int(item.get("done") or 0),
                "total": int(item.get("total") or 0),
            }
    return None


def rebuilding(info: Mapping[str, Any]) -> list[str]:
    return [
        str(item.get("address"))
        for item in info.get("rebuilds") or []
        if isinstance(item, Mapping) and item.get("state") in ("starting", "copying") and item.get("address")
    ]
