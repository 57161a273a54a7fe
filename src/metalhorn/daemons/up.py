"""`metalhorn up`: a whole local metalhorn on this machine.

Until the manager lands this starts one replicated volume: N `metalhorn replica serve` processes (one directory
each under --data-dir) and a `metalhorn engine serve` with an NBD export, then prints how to attach it. Started
again with the same --data-dir it resumes from the replica directories with the data intact.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib

from metalhorn.common import addresses, errors, units
from metalhorn.daemons import supervisor

log = logging.getLogger(__name__)


def default_data_dir() -> pathlib.Path:
    if os.geteuid() == 0:
        return pathlib.Path("/var/lib/metalhorn")
    base = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return pathlib.Path(base) / "metalhorn"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "up",
        help="start a local metalhorn on this machine (one replicated volume with an NBD export)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="where replicas, sockets and logs live (default /var/lib/metalhorn as root, "
        "else ~/.local/share/metalhorn)",
    )
    parser.add_argument("--volume", default="vol1", help="volume name, also the NBD export name (default vol1)")
    parser.add_argument(
        "--size", default=None, help="volume size, e.g. 1G (default 1G; taken from an existing data dir when omitted)"
    )
    parser.add_argument("--replicas", type=int, default=3, help="number of replica processes (default 3)")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:10809",
        help="NBD listen address HOST:PORT or unix:PATH (default 127.0.0.1:10809)",
    )
    parser.set_defaults(func=run)


def _settings(data_dir: pathlib.Path, args: argparse.Namespace) -> dict[str, object]:
    """The volume's settings, kept in DATA/up.json so a restart uses the same ones."""
    path = data_dir / "up.json"
    stored: dict[str, object] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise errors.CorruptMetadata(f"{path}: {exc}; fix or remove it") from exc
    size = units.parse_size(args.size) if args.size else int(stored.get("size", 1 << 30))  # type: ignore[call-overload]
    if stored and stored.get("size") != size:
        raise errors.InvalidArgument(
            f"--size {units.format_size(size)} disagrees with the existing volume in {data_dir} "
            f"({units.format_size(int(stored['size']))}, see {path}); shrinking or resizing here is not supported"  # type: ignore[call-overload]
        )
    if stored and (stored.get("volume") != args.volume or stored.get("replicas") != args.replicas):
        raise errors.InvalidArgument(
            f"{data_dir} holds volume {stored.get('volume')!r} with {stored.get('replicas')} replicas; "
            "pass the same --volume/--replicas or another --data-dir"
        )
    settings: dict[str, object] = {"volume": args.volume, "size": size, "replicas": args.replicas}
    if not stored:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(tmp, path)
    return settings


def run(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise errors.InvalidArgument("--replicas must be at least 1")
    data_dir: pathlib.Path = (args.data_dir or default_data_dir()).resolve()
    for sub in ("replicas", "run", "logs"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    settings = _settings(data_dir, args)
    size = str(settings["size"])
    listen = addresses.parse_address(args.listen, what="--listen")
    sup = supervisor.Supervisor()
    sup.install_signal_handlers()
    try:
        replica_addresses = []
        for index in range(args.replicas):
            address = addresses.Address(path=str(data_dir / "run" / f"replica-{index}.sock"))
            replica_addresses.append(address)
            sup.start(
                supervisor.Child(
                    name=f"replica-{index}",
                    args=supervisor.metalhorn_command(
                        "replica",
                        "serve",
                        str(data_dir / "replicas" / f"replica-{index}"),
                        "--size",
                        size,
                        "--listen",
                        str(address),
                    ),
                    log_path=data_dir / "logs" / f"replica-{index}.log",
                    ready_address=address,
                )
            )
        control = addresses.Address(path=str(data_dir / "run" / "engine.sock"))
        engine_args = ["engine", "serve", args.volume, "--size", size]
        for address in replica_addresses:
            engine_args += ["--replica", str(address)]
        engine_args += ["--frontend", "nbd", "--listen", str(listen), "--control", str(control)]
        sup.start(
            supervisor.Child(
                name="engine",
                args=supervisor.metalhorn_command(*engine_args),
                log_path=data_dir / "logs" / "engine.log",
                ready_address=listen,
                restart=True,
            )
        )
    except BaseException:
        sup.stop_all()
        raise
    banner = _banner(
        args.volume, size=int(size), replicas=args.replicas, listen=listen, control=control, data_dir=data_dir
    )
    print(banner, flush=True)
    return sup.run()


def _banner(
    volume: str,
    *,
    size: int,
    replicas: int,
    listen: addresses.Address,
    control: addresses.Address,
    data_dir: pathlib.Path,
) -> str:
    uri = f"nbd+unix:///{volume}?socket={listen.path}" if listen.is_unix else f"nbd://{listen}/{volume}"
    mnt = f"/run/metalhorn/{volume}"
    return "\n".join(
        [
            f"metalhorn is up: volume {volume} ({units.format_size(size)}, {replicas} replicas) at {uri}",
            f"  data and logs:   {data_dir}",
            f"  replica modes:   metalhorn engine info --control {control}",
            f"  inspect:         nbdinfo {uri}",
            "  attach as a block device (root, no kernel nbd module needed):",
            f"    mkdir -p {mnt} && nbdfuse {mnt} {uri} &",
            f"    losetup --find --show {mnt}/nbd      # then mkfs.ext4 / mount the printed /dev/loopN",
            "Stop with Ctrl-C; run the same command again to resume with the data intact.",
        ]
    )
