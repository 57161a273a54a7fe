"""NOTIFICATION error codes and subcodes, and the exception every decoder raises.

RFC 4271 section 4.5 defines the codes and section 6 says which (code, subcode, data) a speaker sends for each
fault. Decoders raise ``BgpError`` carrying exactly those three values; the session turns it into a
NOTIFICATION with ``BgpError.notification_fields()`` and closes the connection. Codes are kept as IntEnums so
logs show names, but received NOTIFICATIONs keep plain ints: a peer may send codes we do not know.
"""

from __future__ import annotations

import enum

from metalhorn.common import errors


class ErrorCode(enum.IntEnum):
    """RFC 4271 section 4.5, plus ROUTE-REFRESH Message Error (RFC 7313 section 5)."""

    MESSAGE_HEADER = 1
    OPEN_MESSAGE = 2
    UPDATE_MESSAGE = 3
    HOLD_TIMER_EXPIRED = 4
    FSM = 5
    CEASE = 6
    ROUTE_REFRESH = 7


class HeaderSubcode(enum.IntEnum):
    """RFC 4271 section 4.5, Message Header Error subcodes."""

    UNSPECIFIC = 0
    CONNECTION_NOT_SYNCHRONIZED = 1
    BAD_MESSAGE_LENGTH = 2
    BAD_MESSAGE_TYPE = 3


class OpenSubcode(enum.IntEnum):
    """RFC 4271 section 4.5, OPEN Message Error subcodes (7 from RFC 5492)."""

    UNSPECIFIC = 0
    UNSUPPORTED_VERSION_NUMBER = 1
    BAD_PEER_AS = 2
    BAD_BGP_IDENTIFIER = 3
    UNSUPPORTED_OPTIONAL_PARAMETER = 4
    AUTHENTICATION_FAILURE = 5  # deprecated by RFC 4271 appendix A
    UNACCEPTABLE_HOLD_TIME = 6
    UNSUPPORTED_CAPABILITY = 7


class UpdateSubcode(enum.IntEnum):
    """RFC 4271 section 4.5, UPDATE Message Error subcodes."""

    UNSPECIFIC = 0
    MALFORMED_ATTRIBUTE_LIST = 1
    UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE = 2
    MISSING_WELL_KNOWN_ATTRIBUTE = 3
    ATTRIBUTE_FLAGS_ERROR = 4
    ATTRIBUTE_LENGTH_ERROR = 5
    INVALID_ORIGIN_ATTRIBUTE = 6
    AS_ROUTING_LOOP = 7  # deprecated by RFC 4271 appendix A
    INVALID_NEXT_HOP_ATTRIBUTE = 8
    OPTIONAL_ATTRIBUTE_ERROR = 9
    INVALID_NETWORK_FIELD = 10
    MALFORMED_AS_PATH = 11


class FsmSubcode(enum.IntEnum):
    """Finite State Machine Error subcodes (RFC 6608 section 3)."""

    UNSPECIFIED = 0
    UNEXPECTED_MESSAGE_IN_OPEN_SENT = 1
    UNEXPECTED_MESSAGE_IN_OPEN_CONFIRM = 2
    UNEXPECTED_MESSAGE_IN_ESTABLISHED = 3


class CeaseSubcode(enum.IntEnum):
    """Cease subcodes (RFC 4486 section 4; 9 from RFC 8538, 10 from RFC 9384)."""

    UNSPECIFIC = 0
    MAXIMUM_NUMBER_OF_PREFIXES_REACHED = 1
    ADMINISTRATIVE_SHUTDOWN = 2
    PEER_DECONFIGURED = 3
    ADMINISTRATIVE_RESET = 4
    CONNECTION_REJECTED = 5
    OTHER_CONFIGURATION_CHANGE = 6
    CONNECTION_COLLISION_RESOLUTION = 7
    OUT_OF_RESOURCES = 8
    HARD_RESET = 9
    BFD_DOWN = 10


class RouteRefreshSubcode(enum.IntEnum):
    """ROUTE-REFRESH Message Error subcodes (RFC 7313 section 5)."""

    RESERVED = 0
    INVALID_MESSAGE_LENGTH = 1


SUBCODES: dict[int, type[enum.IntEnum]] = {
    ErrorCode.MESSAGE_HEADER: HeaderSubcode,
    ErrorCode.OPEN_MESSAGE: OpenSubcode,
    ErrorCode.UPDATE_MESSAGE: UpdateSubcode,
    ErrorCode.FSM: FsmSubcode,
    ErrorCode.CEASE: CeaseSubcode,
    ErrorCode.ROUTE_REFRESH: RouteRefreshSubcode,
}


def describe(code: int, subcode: int) -> str:
    """Human name of a (code, subcode) pair, for logs; unknown numbers are shown as numbers."""
    try:
        code_name = ErrorCode(code).name
    except ValueError:
        return f"{code}/{subcode}"
    enum_type = SUBCODES.get(code)
    if enum_type is None:
        return f"{code_name}/{subcode}"
    try:
        return f"{code_name}/{enum_type(subcode).name}"
    except ValueError:
        return f"{code_name}/{subcode}"


class BgpError(errors.ProtocolError):
    """A peer sent something RFC 4271 section 6 says must be answered with NOTIFICATION(code, subcode, data).

    ``bgp_code``/``bgp_subcode`` are the BGP numbers (``code`` stays the metalhorn ErrorCode.PROTOCOL of the
    error tree); ``data`` is the Data field the RFC prescribes for this fault (often empty).
    """

    def __init__(self, code: int, subcode: int, data: bytes = b"", *, reason: str) -> None:
        super().__init__(f"BGP {describe(code, subcode)}: {reason}")
        self.bgp_code = int(code)
        self.bgp_subcode = int(subcode)
        self.data = bytes(data)
        self.reason = reason

    def notification_fields(self) -> tuple[int, int, bytes]:
        return self.bgp_code, self.bgp_subcode, self.data


def header_error(subcode: HeaderSubcode, data: bytes = b"", *, reason: str) -> BgpError:
    return BgpError(ErrorCode.MESSAGE_HEADER, subcode, data, reason=reason)


def open_error(subcode: OpenSubcode, data: bytes = b"", *, reason: str) -> BgpError:
    return BgpError(ErrorCode.OPEN_MESSAGE, subcode, data, reason=reason)


def update_error(subcode: UpdateSubcode, data: bytes = b"", *, reason: str) -> BgpError:
    return BgpError(ErrorCode.UPDATE_MESSAGE, subcode, data, reason=reason)
