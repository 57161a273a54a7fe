"""Numbers of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md, fixed newstyle, simple replies).

Section names in the comments refer to that document. All integers travel big-endian.
"""

from __future__ import annotations

import enum

# "Newstyle negotiation": NBDMAGIC, then IHAVEOPT; the client repeats IHAVEOPT before every option.
INIT_PASSWD = 0x4E42444D41474943  # b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # b"IHAVEOPT"
# "Fixed newstyle negotiation": every option reply starts with this magic.
OPTION_REPLY_MAGIC = 0x0003E889045565A9
# "Request message" / "Simple reply message".
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# "Size constraints": what NBD_INFO_BLOCK_SIZE advertises. The maximum is also the largest payload any
# portable client may send without being treated as a denial of service (2^25).
MIN_BLOCK_SIZE = 1
PREFERRED_BLOCK_SIZE = 4096
MAX_PAYLOAD = 32 * 1024 * 1024

# "Conventions": strings SHOULD be <= 256 bytes and MUST be <= 4096 bytes.
MAX_STRING = 4096


class HandshakeFlags(enum.IntFlag):
    """Server handshake flags (16 bits, "Handshake flags")."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlags(enum.IntFlag):
    """Client flags (32 bits, "Client flags"); any other bit makes the server drop the connection."""

    C_FIXED_NEWSTYLE = 1 << 0
    C_NO_ZEROES = 1 << 1


class TransmissionFlags(enum.IntFlag):
    """Transmission flags (16 bits, "Transmission flags")."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Option(enum.IntEnum):
    """Option types ("Option types")."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


class Reply(enum.IntEnum):
    """Option reply types ("Option reply types"); errors have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9


class Info(enum.IntEnum):
    """Information types of NBD_REP_INFO ("NBD_REP_INFO")."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Cmd(enum.IntEnum):
    """Request types ("Request types")."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CmdFlags(enum.IntFlag):
    """Command flags ("Command flags")."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5


class Errno(enum.IntEnum):
    """Error values of replies ("Error values"); numbers are fixed by the protocol, not by the host OS."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108
