"""Listen/connect addresses as users write them: HOST:PORT, [v6]:PORT, unix:PATH, tcp://HOST:PORT."""

from __future__ import annotations

import dataclasses

from metalhorn.common import errors


@dataclasses.dataclass(frozen=True)
class Address:
    host: str = ""
    port: int = 0
    path: str = ""  # set for unix sockets

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, *, what: str = "address") -> Address:
    raw = text
    for prefix in ("tcp://", "nbd://"):
        if text.startswith(prefix):
            text = text[len(prefix) :].rstrip("/")
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise errors.InvalidArgument(f"{what} {raw!r}: unix: needs a socket path")
        return Address(path=path)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise errors.InvalidArgument(f"{what} {raw!r}: write IPv6 as [ADDR]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise errors.InvalidArgument(f"{what} {raw!r}: expected HOST:PORT or unix:PATH")
    try:
        port = int(port_text)
    except ValueError:
        raise errors.InvalidArgument(f"{what} {raw!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise errors.InvalidArgument(f"{what} {raw!r}: port {port} is out of range 0-65535")
    return Address(host=host or "127.0.0.1", port=port)
