"""Server side of one NBD connection as a pure state machine (no sockets, no event loop).

    conn = ServerConnection(Export(name="vol", size=n))
    send(conn.initiate())                      # greeting
    conn.feed(data)                            # bytes from the client, any chunking
    while (event := conn.next_event()) is not None:
        ...                                    # Command -> run it, send messages.simple_reply(...)
    send(conn.data_to_send())                  # option replies and self-answered requests

States (an illegal edge raises Internal -- it is a bug of the shell, not of the peer)::

    NEW --initiate--> CLIENT_FLAGS --flags--> OPTIONS --GO/EXPORT_NAME--> TRANSMISSION
     any state --ABORT/DISC/close()--> DONE

A peer that breaks a MUST of the protocol (bad magic, unknown client flags, a WRITE payload larger than we
would buffer, an unknown name in NBD_OPT_EXPORT_NAME, which cannot be refused politely) raises ProtocolError;
the shell then drops the connection. Nothing else raises while parsing -- not even random bytes.

We negotiate only simple replies (STRUCTURED_REPLY, META_CONTEXT, EXTENDED_HEADERS get NBD_REP_ERR_UNSUP),
no TLS, one export reachable by its name or the empty (default) name.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from metalhorn.common import errors
from metalhorn.storage.nbd import constants, events, messages

C = constants
_MAX_OPTION_DATA = 64 * 1024  # the largest legal option (GO with a 4 KiB name) is far smaller
_REQUEST = messages.REQUEST
_REQUEST_SIZE = messages.REQUEST_SIZE
_REQUEST_MAGIC = C.REQUEST_MAGIC
_MAX_PAYLOAD = C.MAX_PAYLOAD
_COPY_VIA_VIEW = 64 * 1024  # above this, copy a payload out through a memoryview (one copy, not two)

_CMD_BY_VALUE = {int(c): c for c in C.Cmd}
# Flags a command may carry (anything else is EINVAL). FUA is valid on every command once SEND_FUA is set.
# Kept as plain ints: ``~`` of an IntFlag complements only within the flag's own members.
_ALLOWED_FLAGS = {
    C.Cmd.READ: int(C.CmdFlags.FUA),
    C.Cmd.WRITE: int(C.CmdFlags.FUA),
    C.Cmd.FLUSH: int(C.CmdFlags.FUA),
    C.Cmd.TRIM: int(C.CmdFlags.FUA),
    C.Cmd.WRITE_ZEROES: int(C.CmdFlags.FUA | C.CmdFlags.NO_HOLE),
}
# "Error values": writes past the end are ENOSPC, reads and trims past the end EINVAL.
_RANGE_ERRNO = {
    C.Cmd.READ: C.Errno.EINVAL,
    C.Cmd.WRITE: C.Errno.ENOSPC,
    C.Cmd.TRIM: C.Errno.EINVAL,
    C.Cmd.WRITE_ZEROES: C.Errno.ENOSPC,
}


class State(enum.Enum):
    NEW = "new"
    CLIENT_FLAGS = "client-flags"
    OPTIONS = "options"
    TRANSMISSION = "transmission"
    DONE = "done"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.CLIENT_FLAGS, State.DONE}),
    State.CLIENT_FLAGS: frozenset({State.OPTIONS, State.DONE}),
    State.OPTIONS: frozenset({State.TRANSMISSION, State.DONE}),
    State.TRANSMISSION: frozenset({State.DONE}),
    State.DONE: frozenset(),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Export:
    """What one connection serves: the export's name, size (read once, at connect) and description."""

    name: str
    size: int
    description: str = ""
    multi_conn: bool = True

    def __post_init__(self) -> None:
        if self.size < 0:
            raise errors.InvalidArgument(f"export size {self.size} is negative")
        for what, text in (("name", self.name), ("description", self.description)):
            if len(text.encode()) > C.MAX_STRING or "\0" in text:
                raise errors.InvalidArgument(f"export {what} must be at most {C.MAX_STRING} bytes without NUL")

    @property
    def transmission_flags(self) -> int:
        flags = (
            C.TransmissionFlags.HAS_FLAGS
            | C.TransmissionFlags.SEND_FLUSH
            | C.TransmissionFlags.SEND_FUA
            | C.TransmissionFlags.SEND_TRIM
            | C.TransmissionFlags.SEND_WRITE_ZEROES
        )
        if self.multi_conn:
            flags |= C.TransmissionFlags.CAN_MULTI_CONN
        return int(flags)

    def matches(self, name: str) -> bool:
        """The empty name means the default export, which is this one."""
        return name in ("", self.name)


class ServerConnection:
    """Parses what one client sends and answers option haggling; see the module docstring."""

    def __init__(self, export: Export) -> None:
        self.export = export
        self.state = State.NEW
        self.no_zeroes = False
        self.export_name: str | None = None
        self._shutting_down = False
        self._buf = bytearray()
        self._pos = 0
        self._out: list[bytes] = []
        self._flags = export.transmission_flags
        self._size = export.size

    # -- state ---------------------------------------------------------------------------------------------

    def _transition(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise errors.Internal(f"NBD connection cannot go from {self.state.value} to {new.value}")
        self.state = new

    def initiate(self) -> bytes:
        """The server greeting; fixed newstyle with NO_ZEROES offered."""
        self._transition(State.CLIENT_FLAGS)
        return messages.greeting(C.HandshakeFlags.FIXED_NEWSTYLE | C.HandshakeFlags.NO_ZEROES)

    def close(self) -> None:
        """The shell closed the connection; later data is ignored."""
        if self.state is not State.DONE:
            self._transition(State.DONE)

    def begin_shutdown(self) -> None:
        """Server shutdown: later options get NBD_REP_ERR_SHUTDOWN and later requests ESHUTDOWN."""
        self._shutting_down = True

    # -- bytes in, events out ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.state is State.DONE:
            return
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> events.Event | None:
        """The next complete event, or None until more data is fed. Raises ProtocolError only."""
        state = self.state
        if state is State.TRANSMISSION:
            return self._next_request()
        if state is State.OPTIONS:
            return self._next_option()
        if state is State.CLIENT_FLAGS:
            self._read_client_flags()
            return self._next_option() if self.state is State.OPTIONS else None
        if state is State.NEW:
            raise errors.Internal("NBD connection received data before initiate()")
        return None

    def receive_data(self, data: bytes) -> list[events.Event]:
        """Feed ``data`` and return every event it completes."""
        self.feed(data)
        out: list[events.Event] = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    def data_to_send(self) -> list[bytes]:
        """Option replies and self-answered requests queued since the last call."""
        out, self._out = self._out, []
        return out

    def _available(self) -> int:
        return len(self._buf) - self._pos

    # -- handshake -----------------------------------------------------------------------------------------

    def _read_client_flags(self) -> None:
        if self._available() < 4:
            return
        (flags,) = messages.CLIENT_FLAGS.unpack_from(self._buf, self._pos)
        self._pos += 4
        known = int(C.ClientFlags.C_FIXED_NEWSTYLE | C.ClientFlags.C_NO_ZEROES)
        if flags & ~known:
            raise errors.ProtocolError(f"NBD client sent unknown client flags {flags:#x}")
        # A client without C_FIXED_NEWSTYLE still gets fixed-newstyle answers ("Servers MAY choose to honour").
        self.no_zeroes = bool(flags & C.ClientFlags.C_NO_ZEROES)
        self._transition(State.OPTIONS)

    def _next_option(self) -> events.Event | None:
        if self._available() < messages.OPTION_HEADER.size:
            return None
        magic, option, length = messages.OPTION_HEADER.unpack_from(self._buf, self._pos)
        if magic != C.IHAVEOPT:
            raise errors.ProtocolError(f"NBD option has magic {magic:#x}, expected IHAVEOPT")
        if length > _MAX_OPTION_DATA:
            raise errors.ProtocolError(f"NBD option {option} carries {length} bytes; refusing to buffer them")
        start = self._pos + messages.OPTION_HEADER.size
        if len(self._buf) < start + length:
            return None
        data = bytes(self._buf[start : start + length])
        self._pos = start + length
        return self._handle_option(option, data)

    def _reply(self, option: int, reply: int, data: bytes = b"") -> None:
        self._out.append(messages.option_reply(option, reply, data))

    def _handle_option(self, option: int, data: bytes) -> events.Event:
        request = events.OptionRequest(option=option, length=len(data))
        if option == C.Option.ABORT:
            self._reply(option, C.Reply.ACK)
            self._transition(State.DONE)
            return events.Disconnect(during_handshake=True)
        if option == C.Option.EXPORT_NAME:
            return self._export_name(data)
        if self._shutting_down:
            self._reply(option, C.Reply.ERR_SHUTDOWN, b"server is shutting down")
        elif option == C.Option.LIST:
            if data:
                self._reply(option, C.Reply.ERR_INVALID, b"NBD_OPT_LIST takes no data")
            else:
                name = self.export.name.encode()
                self._reply(option, C.Reply.SERVER, messages.server_reply_data(name, self.export.description.encode()))
                self._reply(option, C.Reply.ACK)
        elif option in (C.Option.INFO, C.Option.GO):
            negotiated = self._info_or_go(option, data)
            if negotiated is not None:
                return negotiated
        else:
            # STARTTLS (we run NOTLS), STRUCTURED_REPLY and META_CONTEXT (simple replies only), the rest unknown.
            self._reply(option, C.Reply.ERR_UNSUP, b"option not supported by metalhorn")
        return request

    def _export_name(self, data: bytes) -> events.Event:
        try:
            name = data.decode()
        except UnicodeDecodeError:
            raise errors.ProtocolError("NBD_OPT_EXPORT_NAME with a name that is not UTF-8") from None
        if self._shutting_down or not self.export.matches(name):
            # This option cannot fail politely: "the server MUST terminate the session".
            raise errors.ProtocolError(f"NBD client asked for unknown export {name!r} (NBD_OPT_EXPORT_NAME)")
        self._out.append(messages.export_name_reply(self._size, self._flags, no_zeroes=self.no_zeroes))
        return self._enter_transmission(C.Option.EXPORT_NAME)

    def _info_or_go(self, option: int, data: bytes) -> events.Event | None:
        parsed = _parse_info_request(data)
        if parsed is None:
            self._reply(option, C.Reply.ERR_INVALID, b"malformed NBD_OPT_INFO/NBD_OPT_GO")
            return None
        name, requests = parsed
        if not self.export.matches(name):
            self._reply(option, C.Reply.ERR_UNKNOWN, f"no export named {name!r}".encode())
            return None
        self._reply(option, C.Reply.INFO, messages.info_export(self._size, self._flags))
        if C.Info.NAME in requests:
            self._reply(option, C.Reply.INFO, messages.info_string(C.Info.NAME, self.export.name.encode()))
        if C.Info.DESCRIPTION in requests and self.export.description:
            description = self.export.description.encode()
            self._reply(option, C.Reply.INFO, messages.info_string(C.Info.DESCRIPTION, description))
        # Sent even unrequested (allowed): our constraints are the defaults, so nothing depends on it.
        block_size = messages.info_block_size(C.MIN_BLOCK_SIZE, C.PREFERRED_BLOCK_SIZE, C.MAX_PAYLOAD)
        self._reply(option, C.Reply.INFO, block_size)
        self._reply(option, C.Reply.ACK)
        if option == C.Option.GO:
            return self._enter_transmission(C.Option.GO)
        return None

    def _enter_transmission(self, option: C.Option) -> events.Negotiated:
        self._transition(State.TRANSMISSION)
        self.export_name = self.export.name
        return events.Negotiated(export_name=self.export.name, size=self._size, flags=self._flags, option=option)

    # -- transmission --------------------------------------------------------------------------------------

    def _next_request(self) -> events.Event | None:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < _REQUEST_SIZE:
            return None
        magic, flags, kind, cookie, offset, length = _REQUEST.unpack_from(buf, pos)
        if magic != _REQUEST_MAGIC:
            raise errors.ProtocolError(f"NBD request has magic {magic:#x}, expected {_REQUEST_MAGIC:#x}")
        data = b""
        if kind == 1:  # NBD_CMD_WRITE: the only request with a payload
            if length > _MAX_PAYLOAD:
                # We could skip it, but only by reading gigabytes the client may never send; "either the server
                # or the client MAY initiate a hard disconnect if a payload length ... [is] a denial of service".
                raise errors.ProtocolError(f"NBD write of {length} bytes exceeds the {_MAX_PAYLOAD}-byte maximum")
            end = pos + _REQUEST_SIZE + length
            if len(buf) < end:
                return None
            if length >= _COPY_VIA_VIEW:
                with memoryview(buf) as view:
                    data = bytes(view[pos + _REQUEST_SIZE : end])
            else:
                data = bytes(buf[pos + _REQUEST_SIZE : end])
            self._pos = end
        else:
            self._pos = pos + _REQUEST_SIZE
        if self._pos == len(buf):
            buf.clear()
            self._pos = 0
        cmd = _CMD_BY_VALUE.get(kind)
        if cmd is None:
            return self._answer(cookie, kind, C.Errno.EINVAL, "unknown command")
        if cmd is C.Cmd.DISC:
            self._transition(State.DONE)
            return events.Disconnect(during_handshake=False)
        allowed = _ALLOWED_FLAGS.get(cmd)
        if allowed is None:  # CACHE, BLOCK_STATUS, RESIZE: never advertised
            return self._answer(cookie, kind, C.Errno.EINVAL, "command not negotiated")
        if flags & ~allowed:
            return self._answer(cookie, kind, C.Errno.EINVAL, f"flags {flags:#x} not valid for {cmd.name}")
        if self._shutting_down:
            return self._answer(cookie, kind, C.Errno.ESHUTDOWN, "server is shutting down")
        if cmd is not C.Cmd.FLUSH:  # FLUSH's offset and length are reserved
            if cmd is C.Cmd.READ and length > _MAX_PAYLOAD:
                return self._answer(cookie, kind, C.Errno.EINVAL, "read longer than the maximum payload")
            if offset + length > self._size:
                return self._answer(cookie, kind, _RANGE_ERRNO[cmd], "range beyond the end of the export")
            if length == 0:  # unspecified by the protocol; a no-op is the harmless answer
                return self._answer(cookie, kind, C.Errno.OK, "zero length")
        return events.Command(cmd, flags, cookie, offset, length, data)

    def _answer(self, cookie: int, kind: int, error: C.Errno, reason: str) -> events.Answered:
        self._out.append(messages.simple_reply(cookie, error))
        return events.Answered(cookie=cookie, type=kind, error=error, reason=reason)


def _parse_info_request(data: bytes) -> tuple[str, set[int]] | None:
    """Name and information requests of NBD_OPT_INFO/GO, or None if malformed."""
    if len(data) < 6:
        return None
    (name_length,) = struct.unpack_from(">I", data, 0)
    if name_length > len(data) - 6 or name_length > C.MAX_STRING:
        return None
    try:
        name = data[4 : 4 + name_length].decode()
    except UnicodeDecodeError:
        return None
    (count,) = struct.unpack_from(">H", data, 4 + name_length)
    rest = data[6 + name_length :]
    if len(rest) != 2 * count:
        return None
    return name, set(struct.unpack(f">{count}H", rest))
