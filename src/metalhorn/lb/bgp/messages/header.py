"""The BGP message header (RFC 4271 section 4.1) and a sans-IO framer for a TCP byte stream.

    0   Marker   16 octets, all ones
    16  Length   u16, whole message including the header, 19..4096
    18  Type     u8: 1 OPEN, 2 UPDATE, 3 NOTIFICATION, 4 KEEPALIVE, 5 ROUTE-REFRESH (RFC 2918)

Header checks follow RFC 4271 section 6.1: a bad marker is Connection Not Synchronized (no data), a bad length
is Bad Message Length with the 2-octet Length field as data (also when it is below the minimum of its type), an
unknown type is Bad Message Type with the Type octet as data. RFC 8654 extended messages are not negotiated,
so 4096 is the hard limit.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp.messages import errors

MARKER = b"\xff" * 16
HEADER = struct.Struct(">16sHB")
HEADER_SIZE = 19
MAX_MESSAGE_SIZE = 4096


class MessageType(enum.IntEnum):
    OPEN = 1
    UPDATE = 2
    NOTIFICATION = 3
    KEEPALIVE = 4
    ROUTE_REFRESH = 5


# (minimum, maximum) whole-message length of each type: RFC 4271 sections 4.2-4.5, RFC 2918 section 3.
_LENGTHS: dict[int, tuple[int, int]] = {
    MessageType.OPEN: (29, MAX_MESSAGE_SIZE),
    MessageType.UPDATE: (23, MAX_MESSAGE_SIZE),
    MessageType.NOTIFICATION: (21, MAX_MESSAGE_SIZE),
    MessageType.KEEPALIVE: (19, 19),
    MessageType.ROUTE_REFRESH: (23, 23),
}


@dataclasses.dataclass(frozen=True, slots=True)
class RawMessage:
    """One framed message: its type and the body after the header (checked for length, not content)."""

    type: MessageType
    body: bytes


def encode(message_type: MessageType, body: bytes) -> bytes:
    """Prefix ``body`` with a header; refuses bodies that would exceed 4096 octets in total."""
    length = HEADER_SIZE + len(body)
    if length > MAX_MESSAGE_SIZE:
        raise mh_errors.InvalidArgument(
            f"BGP {message_type.name} of {length} octets exceeds {MAX_MESSAGE_SIZE}; split it (packing.py)"
        )
    return HEADER.pack(MARKER, length, message_type) + body


def decode(header: bytes) -> tuple[MessageType, int]:
    """Check a 19-octet header (RFC 4271 section 6.1); returns (type, whole length)."""
    marker, length, type_code = HEADER.unpack(header[:HEADER_SIZE])
    if marker != MARKER:
        raise errors.header_error(errors.HeaderSubcode.CONNECTION_NOT_SYNCHRONIZED, reason="marker is not all ones")
    length_field = header[16:18]
    if not HEADER_SIZE <= length <= MAX_MESSAGE_SIZE:
        raise errors.header_error(
            errors.HeaderSubcode.BAD_MESSAGE_LENGTH, length_field, reason=f"length {length} outside 19..4096"
        )
    bounds = _LENGTHS.get(type_code)
    if bounds is None:
        raise errors.header_error(
            errors.HeaderSubcode.BAD_MESSAGE_TYPE, bytes([type_code]), reason=f"unknown message type {type_code}"
        )
    message_type = MessageType(type_code)
    low, high = bounds
    if not low <= length <= high:
        raise errors.header_error(
            errors.HeaderSubcode.BAD_MESSAGE_LENGTH,
            length_field,
            reason=f"length {length} invalid for {message_type.name} ({low}..{high})",
        )
    return message_type, length


class Framer:
    """Cuts a TCP byte stream into RawMessages: ``feed(data)`` returns every message completed so far.

    A header error raises BgpError and poisons the framer (the stream is no longer synchronised), so later
    feeds raise the same error again instead of guessing where the next message starts.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed: errors.BgpError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[RawMessage]:
        if self._failed is not None:
            raise self._failed
        buffer = self._buffer
        buffer += data
        out: list[RawMessage] = []
        start = 0
        view = memoryview(buffer)
        try:
            while len(buffer) - start >= HEADER_SIZE:
                try:
                    message_type, length = decode(bytes(view[start : start + HEADER_SIZE]))
                except errors.BgpError as exc:
                    self._failed = exc
                    raise
                if len(buffer) - start < length:
                    break
                out.append(RawMessage(message_type, bytes(view[start + HEADER_SIZE : start + length])))
                start += length
        finally:
            view.release()
        if start:
            del buffer[:start]
        return out
