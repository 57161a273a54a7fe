from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalhorn.common import errors
from metalhorn.storage.wire import codec

frames = st.builds(
    codec.Frame,
    type=st.sampled_from(list(codec.FrameType)),
    request_id=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**64 - 1),
    length=st.integers(0, codec.MAX_LENGTH),
    flags=st.sampled_from([0, int(codec.Flags.REPLY), int(codec.Flags.FUA), int(codec.Flags.NO_HOLE)]),
    error=st.integers(0, 12),
    payload=st.binary(max_size=300),
)


@given(st.lists(frames, max_size=8), st.integers(1, 64))
def test_round_trip_in_any_chunking(items: list[codec.Frame], chunk: int) -> None:
    stream = b"".join(codec.encode(f) for f in items)
    decoder = codec.Decoder()
    out: list[codec.Frame] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == items
    assert decoder.buffered == 0


@given(st.binary(min_size=codec.HEADER_SIZE, max_size=200))
def test_garbage_raises_protocol_error_or_waits(data: bytes) -> None:
    decoder = codec.Decoder()
    try:
        for frame in decoder.feed(data):
            assert isinstance(frame.type, codec.FrameType)
    except errors.ProtocolError:
        pass


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({0: ord("X")}, "magic"),
        ({2: 9}, "version"),
        ({3: 99}, "type"),
        ({4: 0x40}, "flags"),
        ({28: 0x7F}, "oversized"),
    ],
    ids=["magic", "version", "type", "flags", "oversized"],
)
def test_bad_header_fields_are_rejected(patch: dict[int, int], message: str) -> None:
    raw = bytearray(codec.encode(codec.Frame(codec.FrameType.PING, request_id=1)))
    for index, value in patch.items():
        raw[index] = value
    with pytest.raises(errors.ProtocolError, match=message):
        codec.Decoder().feed(bytes(raw))


def test_golden_write_frame() -> None:
    frame = codec.Frame(codec.FrameType.WRITE, request_id=7, offset=4096, length=3, payload=b"abc")
    assert codec.encode(frame).hex() == ("4d48010300000000000000000000000700000000000010000000000300000003616263")


def test_negotiation() -> None:
    assert codec.negotiate(bytes([1, 2, 3])) == 1
    with pytest.raises(errors.NotSupported):
        codec.negotiate(bytes([7]))


def test_error_reply_round_trip() -> None:
    request = codec.Frame(codec.FrameType.WRITE, request_id=3, offset=0, payload=b"x")
    reply = codec.error_reply(request, errors.NoSpace("disk full"))
    (decoded,) = codec.Decoder().feed(codec.encode(reply))
    with pytest.raises(errors.NoSpace, match="disk full"):
        codec.raise_for_error(decoded)
