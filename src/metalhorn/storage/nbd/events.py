"""What a server-side NBD connection reports to its shell (h11 style: bytes in, events out).

Option haggling is answered inside the connection (the answers depend only on the export), so the shell sees
OptionRequest only to log it. In transmission the shell executes each Command and sends the reply itself;
requests that the connection could answer without the device (bad flags, out of range, unknown command) come
out as Answered, with the reply already queued in ``data_to_send()``.
"""

from __future__ import annotations

import dataclasses

from metalhorn.storage.nbd import constants

_FUA = int(constants.CmdFlags.FUA)  # plain ints: IntFlag arithmetic is slow on the data path
_NO_HOLE = int(constants.CmdFlags.NO_HOLE)


@dataclasses.dataclass(frozen=True, slots=True)
class OptionRequest:
    """The client sent an option during haggling; its reply is queued already."""

    option: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiated:
    """Haggling ended (NBD_OPT_GO or NBD_OPT_EXPORT_NAME); commands follow."""

    export_name: str
    size: int
    flags: int
    option: constants.Option


@dataclasses.dataclass(slots=True)
class Command:
    """One request to execute on the device; reply with the same cookie, in any order.

    ``data`` holds the payload of NBD_CMD_WRITE and is empty for every other type.
    (Not frozen: one of these is built per request on the data path.)
    """

    type: constants.Cmd
    flags: int
    cookie: int
    offset: int
    length: int
    data: bytes = b""

    @property
    def fua(self) -> bool:
        return bool(self.flags & _FUA)

    @property
    def no_hole(self) -> bool:
        return bool(self.flags & _NO_HOLE)


@dataclasses.dataclass(frozen=True, slots=True)
class Answered:
    """The connection answered a request itself (``error`` may be OK, e.g. for a zero-length request)."""

    cookie: int
    type: int
    error: constants.Errno
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnect:
    """A soft disconnect: NBD_CMD_DISC (finish in-flight requests, then close) or NBD_OPT_ABORT."""

    during_handshake: bool


Event = OptionRequest | Negotiated | Command | Answered | Disconnect
