"""The one error tree of metalhorn, with stable codes.

    MetalhornError                 code: ErrorCode, message says what was wrong and what to do
    ├── InvalidArgument            INVALID        bad input from a user or a peer
    │   └── OutOfRange             OUT_OF_RANGE   offset/length outside the device
    ├── NotFound                   NOT_FOUND
    ├── AlreadyExists              ALREADY_EXISTS
    ├── Conflict                   CONFLICT       optimistic concurrency lost; retry
    ├── NotSupported               NOT_SUPPORTED
    ├── ProtocolError              PROTOCOL       a peer broke a wire protocol (closes that connection)
    ├── CorruptMetadata            CORRUPT        an on-disk file is damaged; never silently re-created
    ├── StorageIOError             IO             a read/write/flush failed
    │   ├── NoSpace                NO_SPACE       ENOSPC
    │   └── Unavailable            UNAVAILABLE    no healthy replica / peer timed out
    └── Internal                   INTERNAL

Codes cross the wire (replica protocol, REST); strings never do. Foreign exceptions are translated at the
boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    OK = 0
    INVALID = 1
    OUT_OF_RANGE = 2
    NOT_FOUND = 3
    ALREADY_EXISTS = 4
    CONFLICT = 5
    NOT_SUPPORTED = 6
    PROTOCOL = 7
    CORRUPT = 8
    IO = 9
    NO_SPACE = 10
    UNAVAILABLE = 11
    INTERNAL = 12


class MetalhornError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MetalhornError):
    code = ErrorCode.INVALID


class OutOfRange(InvalidArgument):
    code = ErrorCode.OUT_OF_RANGE


class NotFound(MetalhornError):
    code = ErrorCode.NOT_FOUND


class AlreadyExists(MetalhornError):
    code = ErrorCode.ALREADY_EXISTS


class Conflict(MetalhornError):
    code = ErrorCode.CONFLICT


class NotSupported(MetalhornError):
    code = ErrorCode.NOT_SUPPORTED


class ProtocolError(MetalhornError):
    code = ErrorCode.PROTOCOL


class CorruptMetadata(MetalhornError):
    code = ErrorCode.CORRUPT


class StorageIOError(MetalhornError):
    code = ErrorCode.IO


class NoSpace(StorageIOError):
    code = ErrorCode.NO_SPACE


class Unavailable(StorageIOError):
    code = ErrorCode.UNAVAILABLE


class Internal(MetalhornError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[MetalhornError]] = {
    ErrorCode.INVALID: InvalidArgument,
    ErrorCode.OUT_OF_RANGE: OutOfRange,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.NOT_SUPPORTED: NotSupported,
    ErrorCode.PROTOCOL: ProtocolError,
    ErrorCode.CORRUPT: CorruptMetadata,
    ErrorCode.IO: StorageIOError,
    ErrorCode.NO_SPACE: NoSpace,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.INTERNAL: Internal,
}


def from_code(code: int, message: str) -> MetalhornError:
    """Rebuild the exception for a code received from a peer; an unknown code becomes Internal."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        return Internal(f"unknown error code {code}: {message}")
    return cls(message)


def from_oserror(exc: OSError, what: str) -> StorageIOError:
    """Translate an OSError from a file operation; ENOSPC/EDQUOT become NoSpace."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on device")
    return StorageIOError(f"{what}: {exc.strerror or exc}")
