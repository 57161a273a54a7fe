"""Encode and decode any BGP message: the dispatch on the header's type (RFC 4271 section 4.1).

``encode(message)`` returns wire bytes with header; ``decode(raw)`` turns a RawMessage from the Framer into a
message value. UPDATE needs ``four_octet_as``: True once both OPENs carried the 4-octet AS capability
(RFC 6793 section 4); before that (and for every other type) it is ignored.
"""

from __future__ import annotations

from metalhorn.lb.bgp.messages import errors, header, open_message, simple, update

Message = open_message.Open | update.Update | simple.Notification | simple.Keepalive | simple.RouteRefresh


def encode(message: Message, *, four_octet_as: bool = True) -> bytes:
    if isinstance(message, update.Update):
        return header.encode(header.MessageType.UPDATE, update.encode_body(message, four_octet_as=four_octet_as))
    if isinstance(message, open_message.Open):
        return header.encode(header.MessageType.OPEN, open_message.encode_body(message))
    if isinstance(message, simple.Keepalive):
        return header.encode(header.MessageType.KEEPALIVE, b"")
    if isinstance(message, simple.Notification):
        return header.encode(header.MessageType.NOTIFICATION, simple.encode_notification(message))
    return header.encode(header.MessageType.ROUTE_REFRESH, simple.encode_route_refresh(message))


def decode(raw: header.RawMessage, *, four_octet_as: bool = True) -> Message:
    kind = raw.type
    if kind == header.MessageType.UPDATE:
        return update.decode_body(raw.body, four_octet_as=four_octet_as)
    if kind == header.MessageType.OPEN:
        return open_message.decode_body(raw.body)
    if kind == header.MessageType.KEEPALIVE:
        return simple.decode_keepalive(raw.body)
    if kind == header.MessageType.NOTIFICATION:
        return simple.decode_notification(raw.body)
    return simple.decode_route_refresh(raw.body)


def decode_one(data: bytes, *, four_octet_as: bool = True) -> Message:
    """Decode exactly one whole message (header included); for tests and captures."""
    framer = header.Framer()
    raws = framer.feed(data)
    if len(raws) != 1 or framer.buffered:
        length = len(data).to_bytes(2, "big") if len(data) <= 0xFFFF else b"\xff\xff"
        raise errors.header_error(errors.HeaderSubcode.BAD_MESSAGE_LENGTH, length, reason="not exactly one message")
    return decode(raws[0], four_octet_as=four_octet_as)
