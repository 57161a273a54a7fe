"""Sans-IO codec of the replica protocol: binary, length-prefixed, pipelined frames.

Header (32 bytes, big-endian)::

    0  magic        2s   b"MH"
    2  version      u8   protocol version of this frame (negotiated by HELLO)
    3  type         u8   FrameType
    4  flags        u16  REPLY, FUA, NO_HOLE
    6  error        u16  ErrorCode (replies only; 0 = OK)
    8  request_id   u64  chosen by the client, echoed in the reply; replies may come out of order
    16 offset       u64  byte offset (READ/WRITE/UNMAP/WRITE_ZEROES)
    24 length       u32  byte length (READ/UNMAP/WRITE_ZEROES; WRITE uses the payload length)
    28 payload_len  u32  bytes of payload that follow (<= MAX_PAYLOAD)

Negotiation: the first frame a client sends is HELLO whose payload lists the versions it speaks (one byte each);
the server answers HELLO with the chosen version in the header, or error NOT_SUPPORTED and closes.
CONTROL frames carry JSON ({"op": ...}) for snapshot/info and other rare operations.
FILE_* frames move one snapshot file of the chain during a rebuild (storage/wire/filesync.py).
An error reply's payload is a UTF-8 message for humans; programs look only at the code.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from metalhorn.common import errors

MAGIC = b"MH"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct(">2sBBHHQQII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 32 * 1024 * 1024 + 4096
MAX_LENGTH = MAX_PAYLOAD


class FrameType(enum.IntEnum):
    HELLO = 1
    READ = 2
    WRITE = 3
    UNMAP = 4
    WRITE_ZEROES = 5
    FLUSH = 6
    CONTROL = 7
    PING = 8
    # Rebuild (storage/wire/filesync.py has the payload formats): one named file of the chain, not the volume.
    FILE_READ = 9  # offset/length: a range of the file; payload: file name. Reply: its data extents
    FILE_WRITE = 10  # offset/length: a range; payload: name + extents. Holes where the extents leave gaps
    FILE_CHECKSUM = 11  # offset/length: a range; payload: file name. Reply: a digest per 2 MiB block


class Flags(enum.IntFlag):
    NONE = 0
    REPLY = 0x8000
    FUA = 0x0001
    NO_HOLE = 0x0002


# Plain ints for the hot path: IntFlag arithmetic costs microseconds per frame.
FLAG_REPLY = int(Flags.REPLY)
FLAG_FUA = int(Flags.FUA)
FLAG_NO_HOLE = int(Flags.NO_HOLE)
_KNOWN_FLAGS = FLAG_REPLY | FLAG_FUA | FLAG_NO_HOLE
_TYPES = frozenset(int(t) for t in FrameType)
_FRAME_TYPES = {int(t): t for t in FrameType}


@dataclasses.dataclass(slots=True)
class Frame:
    type: FrameType
    request_id: int = 0
    offset: int = 0
    length: int = 0
    flags: int = 0
    error: int = 0
    payload: bytes = b""
    version: int = VERSION

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    def reply(self, *, payload: bytes = b"", error: int = 0, length: int | None = None) -> Frame:
        return Frame(
            type=self.type,
            request_id=self.request_id,
            offset=self.offset,
            length=self.length if length is None else length,
            flags=FLAG_REPLY,
            error=error,
            payload=payload,
            version=self.version,
        )


def encode_header(frame: Frame) -> bytes:
    return HEADER.pack(
        MAGIC,
        frame.version,
        frame.type,
        frame.flags,
        frame.error,
        frame.request_id,
        frame.offset,
        frame.length,
        len(frame.payload),
    )


def encode(frame: Frame) -> bytes:
    """Encode a frame; for large payloads prefer writing encode_header() and the payload separately."""
    if len(frame.payload) > MAX_PAYLOAD:
        raise errors.InvalidArgument(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    return encode_header(frame) + bytes(frame.payload)


def error_reply(request: Frame, exc: errors.MetalhornError) -> Frame:
    return request.reply(payload=exc.message.encode("utf-8", "replace")[:4096], error=int(exc.code), length=0)


def raise_for_error(frame: Frame) -> None:
    if frame.error:
        raise errors.from_code(frame.error, bytes(frame.payload).decode("utf-8", "replace"))


class Decoder:
    """Turns a byte stream into frames. Raises ProtocolError on garbage; the caller then closes the stream."""

    __slots__ = ("_buf", "_max_payload")

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        # Parse straight from `data` when nothing is buffered (the common case), so each payload is copied
        # once; keep only the unparsed tail.
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        frames: list[Frame] = []
        pos = 0
        end = len(src)
        unpack_from = HEADER.unpack_from
        with memoryview(src) as view:
            while end - pos >= HEADER_SIZE:
                magic, version, ftype, flags, error, request_id, offset, length, payload_len = unpack_from(src, pos)
                if magic != MAGIC:
                    raise errors.ProtocolError(f"bad frame magic {bytes(magic)!r}")
                if version not in SUPPORTED_VERSIONS:
                    raise errors.ProtocolError(f"unsupported frame version {version}")
                if ftype not in _TYPES:
                    raise errors.ProtocolError(f"unknown frame type {ftype}")
                if flags & ~_KNOWN_FLAGS:
                    raise errors.ProtocolError(f"unknown frame flags {flags:#x}")
                if payload_len > self._max_payload or length > MAX_LENGTH:
                    raise errors.ProtocolError(f"oversized frame: payload {payload_len}, length {length}")
                if end - pos - HEADER_SIZE < payload_len:
                    break
                start = pos + HEADER_SIZE
                payload = bytes(view[start : start + payload_len]) if payload_len else b""
                frames.append(Frame(_FRAME_TYPES[ftype], request_id, offset, length, flags, error, payload, version))
                pos = start + payload_len
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return frames


def negotiate(offered: bytes) -> int:
    """Server side of HELLO: the highest version both speak, or raise NotSupported."""
    common = set(offered) & set(SUPPORTED_VERSIONS)
    if not common:
        raise errors.NotSupported(
            f"no common replica protocol version: peer offers {sorted(set(offered))}, we speak "
            f"{list(SUPPORTED_VERSIONS)}"
        )
    return max(common)


def hello() -> Frame:
    return Frame(FrameType.HELLO, request_id=0, payload=bytes(SUPPORTED_VERSIONS))
