"""Byte layouts of NBD messages and the pure functions that build the server's side of them.

Layouts follow NetworkBlockDevice/nbd doc/proto.md; every field is big-endian.
"""

from __future__ import annotations

import struct

from metalhorn.common import errors
from metalhorn.storage.nbd import constants

# "Newstyle negotiation": NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
GREETING = struct.Struct(">QQH")
CLIENT_FLAGS = struct.Struct(">I")
# Option request header: IHAVEOPT, option, data length.
OPTION_HEADER = struct.Struct(">QII")
# Option reply header: reply magic, option, reply type, data length.
OPTION_REPLY = struct.Struct(">QIII")
# Reply to NBD_OPT_EXPORT_NAME: size, transmission flags (then 124 zero bytes unless C_NO_ZEROES).
EXPORT_NAME_REPLY = struct.Struct(">QH")
EXPORT_NAME_PADDING = bytes(124)
# NBD_REP_INFO payloads.
INFO_EXPORT = struct.Struct(">HQH")
INFO_BLOCK_SIZE = struct.Struct(">HIII")
INFO_TYPE = struct.Struct(">H")
# "Request message": magic, command flags, type, cookie, offset, length.
REQUEST = struct.Struct(">IHHQQI")
REQUEST_SIZE = REQUEST.size
# "Simple reply message": magic, error, cookie.
SIMPLE_REPLY = struct.Struct(">IIQ")

_pack_simple_reply = SIMPLE_REPLY.pack
_SIMPLE_REPLY_MAGIC = constants.SIMPLE_REPLY_MAGIC


def greeting(flags: int) -> bytes:
    return GREETING.pack(constants.INIT_PASSWD, constants.IHAVEOPT, flags)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(constants.OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def export_name_reply(size: int, flags: int, *, no_zeroes: bool) -> bytes:
    head = EXPORT_NAME_REPLY.pack(size, flags)
    return head if no_zeroes else head + EXPORT_NAME_PADDING


def server_reply_data(name: bytes, description: bytes) -> bytes:
    """NBD_REP_SERVER payload: name length, name, then free text shown to humans."""
    return struct.pack(">I", len(name)) + name + description


def info_export(size: int, flags: int) -> bytes:
    return INFO_EXPORT.pack(constants.Info.EXPORT, size, flags)


def info_string(info: constants.Info, text: bytes) -> bytes:
    return INFO_TYPE.pack(info) + text


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return INFO_BLOCK_SIZE.pack(constants.Info.BLOCK_SIZE, minimum, preferred, maximum)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """The 16-byte simple reply header; a successful READ sends its data right after it."""
    return _pack_simple_reply(_SIMPLE_REPLY_MAGIC, error, cookie)


def request(cmd: int, *, cookie: int, offset: int = 0, length: int = 0, flags: int = 0, data: bytes = b"") -> bytes:
    """A client request (for tests and tools); WRITE carries ``data`` and its length."""
    if data:
        length = len(data)
    return REQUEST.pack(constants.REQUEST_MAGIC, flags, cmd, cookie, offset, length) + data


def errno_for(exc: BaseException) -> constants.Errno:
    """The NBD error value for a failure of the device (codes decide, never messages)."""
    if isinstance(exc, errors.NoSpace):
        return constants.Errno.ENOSPC
    if isinstance(exc, errors.InvalidArgument):  # includes OutOfRange
        return constants.Errno.EINVAL
    if isinstance(exc, errors.NotSupported):
        return constants.Errno.ENOTSUP
    return constants.Errno.EIO
