"""The sans-IO NBD server connection: handshake bytes, option sequences, every command, garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metalhorn.common import errors
from metalhorn.storage.nbd import connection, constants, events, messages

C = constants
SIZE = 1024 * 1024
EXPORT = connection.Export(name="vol", size=SIZE, description="a test volume")
FLAGS = (
    C.TransmissionFlags.HAS_FLAGS
    | C.TransmissionFlags.SEND_FLUSH
    | C.TransmissionFlags.SEND_FUA
    | C.TransmissionFlags.SEND_TRIM
    | C.TransmissionFlags.SEND_WRITE_ZEROES
    | C.TransmissionFlags.CAN_MULTI_CONN
)
BOTH_CLIENT_FLAGS = struct.pack(">I", 3)


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", C.IHAVEOPT, opt, len(data)) + data


def info_request(name: str, *infos: int) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(infos)}H", len(infos), *infos)


def parse_option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """(option, reply type, payload) of each option reply in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        magic, opt, reply, length = struct.unpack_from(">QIII", data, pos)
        assert magic == C.OPTION_REPLY_MAGIC
        out.append((opt, reply, data[pos + 20 : pos + 20 + length]))
        pos += 20 + length
    return out


def negotiating() -> connection.ServerConnection:
    conn = connection.ServerConnection(EXPORT)
    conn.initiate()
    assert conn.receive_data(BOTH_CLIENT_FLAGS) == []
    return conn


def transmitting() -> connection.ServerConnection:
    conn = negotiating()
    evs = conn.receive_data(option(C.Option.GO, info_request("vol")))
    assert isinstance(evs[-1], events.Negotiated)
    conn.data_to_send()
    return conn


# -- handshake -------------------------------------------------------------------------------------------


def test_greeting_golden_bytes() -> None:
    conn = connection.ServerConnection(EXPORT)
    assert conn.initiate() == bytes.fromhex("4e42444d4147494349484156454f50540003")
    assert conn.state is connection.State.CLIENT_FLAGS


def test_go_golden_bytes() -> None:
    conn = negotiating()
    evs = conn.receive_data(option(C.Option.GO, info_request("vol", C.Info.NAME, C.Info.DESCRIPTION)))
    assert evs == [events.Negotiated(export_name="vol", size=SIZE, flags=FLAGS, option=C.Option.GO)]
    magic = "0003e889045565a9"
    go = "00000007"
    expected = (
        f"{magic}{go}00000003"
        "0000000c"
        "0000"
        "0000000000100000"
        "016d"  # INFO_EXPORT: size 1 MiB, flags
        f"{magic}{go}00000003"
        "00000005"
        "0001"
        + b"vol".hex()  # INFO_NAME
        + f"{magic}{go}00000003"
        "0000000f"
        "0002"
        + b"a test volume".hex()  # INFO_DESCRIPTION
        + f"{magic}{go}00000003"
        "0000000e"
        "0003"
        "00000001"
        "00001000"
        "02000000"  # INFO_BLOCK_SIZE
        f"{magic}{go}00000001"
        "00000000"  # ACK
    )
    assert b"".join(conn.data_to_send()).hex() == expected
    assert conn.state is connection.State.TRANSMISSION


@pytest.mark.parametrize(("client_flags", "padding"), [(1, 124), (3, 0)], ids=["zeroes", "no-zeroes"])
def test_export_name(client_flags: int, padding: int) -> None:
    conn = connection.ServerConnection(EXPORT)
    conn.initiate()
    evs = conn.receive_data(struct.pack(">I", client_flags) + option(C.Option.EXPORT_NAME, b"vol"))
    assert evs == [events.Negotiated(export_name="vol", size=SIZE, flags=FLAGS, option=C.Option.EXPORT_NAME)]
    assert b"".join(conn.data_to_send()) == struct.pack(">QH", SIZE, FLAGS) + bytes(padding)


def test_export_name_default_and_unknown() -> None:
    conn = negotiating()
    assert isinstance(conn.receive_data(option(C.Option.EXPORT_NAME))[0], events.Negotiated)
    with pytest.raises(errors.ProtocolError, match="unknown export"):
        negotiating().receive_data(option(C.Option.EXPORT_NAME, b"other"))


def test_unknown_client_flags_close() -> None:
    conn = connection.ServerConnection(EXPORT)
    conn.initiate()
    with pytest.raises(errors.ProtocolError, match="client flags"):
        conn.receive_data(struct.pack(">I", 4))


def test_client_flags_byte_by_byte_then_option() -> None:
    conn = connection.ServerConnection(EXPORT)
    conn.initiate()
    stream = BOTH_CLIENT_FLAGS + option(C.Option.LIST)
    evs = []
    for i in range(len(stream)):
        evs += conn.receive_data(stream[i : i + 1])
    assert evs == [events.OptionRequest(option=C.Option.LIST, length=0)]
    assert conn.no_zeroes


# Each step: (option, data, expected replies as (reply type, payload or None to skip), event type)
OPTION_CASES = {
    "list": (
        C.Option.LIST,
        b"",
        [(C.Reply.SERVER, b"\x00\x00\x00\x03vola test volume"), (C.Reply.ACK, b"")],
    ),
    "list-with-data": (C.Option.LIST, b"x", [(C.Reply.ERR_INVALID, None)]),
    "info": (
        C.Option.INFO,
        info_request("vol"),
        [
            (C.Reply.INFO, messages.info_export(SIZE, FLAGS)),
            (C.Reply.INFO, messages.info_block_size(1, 4096, 32 * 1024 * 1024)),
            (C.Reply.ACK, b""),
        ],
    ),
    "info-default-name": (C.Option.INFO, info_request("", C.Info.NAME), [(C.Reply.INFO, None)] * 3 + [(1, b"")]),
    "info-unknown-name": (C.Option.INFO, info_request("nope"), [(C.Reply.ERR_UNKNOWN, None)]),
    "go-unknown-name": (C.Option.GO, info_request("nope"), [(C.Reply.ERR_UNKNOWN, None)]),
    "go-malformed": (C.Option.GO, b"\x00\x00\x00\x09ab", [(C.Reply.ERR_INVALID, None)]),
    "go-trailing-bytes": (C.Option.GO, info_request("vol") + b"\x00", [(C.Reply.ERR_INVALID, None)]),
    "go-bad-utf8": (C.Option.GO, b"\x00\x00\x00\x01\xff\x00\x00", [(C.Reply.ERR_INVALID, None)]),
    "structured-reply": (C.Option.STRUCTURED_REPLY, b"", [(C.Reply.ERR_UNSUP, None)]),
    "set-meta-context": (C.Option.SET_META_CONTEXT, b"\x00" * 8, [(C.Reply.ERR_UNSUP, None)]),
    "list-meta-context": (C.Option.LIST_META_CONTEXT, b"\x00" * 8, [(C.Reply.ERR_UNSUP, None)]),
    "starttls": (C.Option.STARTTLS, b"", [(C.Reply.ERR_UNSUP, None)]),
    "extended-headers": (C.Option.EXTENDED_HEADERS, b"", [(C.Reply.ERR_UNSUP, None)]),
    "unknown": (4242, b"abc", [(C.Reply.ERR_UNSUP, None)]),
}


@pytest.mark.parametrize("case", OPTION_CASES, ids=list(OPTION_CASES))
def test_option_replies(case: str) -> None:
    opt, data, expected = OPTION_CASES[case]
    conn = negotiating()
    assert conn.receive_data(option(opt, data)) == [events.OptionRequest(option=opt, length=len(data))]
    replies = parse_option_replies(b"".join(conn.data_to_send()))
    assert [(o, r) for o, r, _ in replies] == [(opt, r) for r, _ in expected]
    for (_, _, got), (_, want) in zip(replies, expected, strict=True):
        if want is not None:
            assert got == want
    assert conn.state is connection.State.OPTIONS  # every one of these lets the client go on


def test_option_sequence_then_go_then_commands_in_one_chunk() -> None:
    conn = negotiating()
    stream = (
        option(C.Option.STRUCTURED_REPLY)
        + option(C.Option.LIST)
        + option(C.Option.GO, info_request("", C.Info.BLOCK_SIZE))
        + messages.request(C.Cmd.READ, cookie=7, offset=0, length=512)
    )
    evs = conn.receive_data(stream)
    assert [type(e) for e in evs] == [events.OptionRequest, events.OptionRequest, events.Negotiated, events.Command]
    replies = parse_option_replies(b"".join(conn.data_to_send()))
    assert [r for _, r, _ in replies] == [C.Reply.ERR_UNSUP, C.Reply.SERVER, C.Reply.ACK] + [C.Reply.INFO] * 2 + [1]


def test_abort() -> None:
    conn = negotiating()
    assert conn.receive_data(option(C.Option.ABORT)) == [events.Disconnect(during_handshake=True)]
    assert parse_option_replies(b"".join(conn.data_to_send())) == [(C.Option.ABORT, C.Reply.ACK, b"")]
    assert conn.state is connection.State.DONE
    assert conn.receive_data(b"anything") == []


def test_shutdown_refuses_options_but_not_abort() -> None:
    conn = negotiating()
    conn.begin_shutdown()
    conn.receive_data(option(C.Option.GO, info_request("vol")))
    assert [r for _, r, _ in parse_option_replies(b"".join(conn.data_to_send()))] == [C.Reply.ERR_SHUTDOWN]
    with pytest.raises(errors.ProtocolError):
        conn.receive_data(option(C.Option.EXPORT_NAME, b"vol"))


@pytest.mark.parametrize(
    "stream",
    [
        struct.pack(">QII", 0x1234, C.Option.LIST, 0),
        struct.pack(">QII", C.IHAVEOPT, C.Option.GO, 10_000_000),
    ],
    ids=["bad-magic", "huge-option"],
)
def test_bad_option_headers_close(stream: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        negotiating().receive_data(stream)


# -- state machine ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [(o, n) for o in connection.State for n in connection.State if n not in connection.TRANSITIONS[o]],
    ids=lambda s: s.value,
)
def test_every_illegal_transition_raises(old: connection.State, new: connection.State) -> None:
    conn = connection.ServerConnection(EXPORT)
    conn.state = old
    with pytest.raises(errors.Internal):
        conn._transition(new)


def test_data_before_initiate_is_a_bug_of_the_shell() -> None:
    conn = connection.ServerConnection(EXPORT)
    with pytest.raises(errors.Internal):
        conn.receive_data(b"\x00\x00\x00\x01")
    with pytest.raises(errors.Internal):
        negotiating().initiate()


def test_export_validation() -> None:
    with pytest.raises(errors.InvalidArgument):
        connection.Export(name="x" * 5000, size=1)
    with pytest.raises(errors.InvalidArgument):
        connection.Export(name="a\0b", size=1)
    with pytest.raises(errors.InvalidArgument):
        connection.Export(name="a", size=-1)
    assert not connection.Export(name="a", size=1, multi_conn=False).transmission_flags & 0x100


# -- transmission ----------------------------------------------------------------------------------------

COMMAND_CASES = {
    "read": (dict(cmd=C.Cmd.READ, offset=4096, length=4096), C.Cmd.READ, b""),
    "read-fua-ignored": (dict(cmd=C.Cmd.READ, offset=0, length=1, flags=1), C.Cmd.READ, b""),
    "read-last-byte": (dict(cmd=C.Cmd.READ, offset=SIZE - 1, length=1), C.Cmd.READ, b""),
    "write": (dict(cmd=C.Cmd.WRITE, offset=1, data=b"hello"), C.Cmd.WRITE, b"hello"),
    "write-fua": (dict(cmd=C.Cmd.WRITE, offset=SIZE - 2, data=b"hi", flags=1), C.Cmd.WRITE, b"hi"),
    "flush": (dict(cmd=C.Cmd.FLUSH), C.Cmd.FLUSH, b""),
    "flush-reserved-fields-ignored": (dict(cmd=C.Cmd.FLUSH, offset=SIZE * 2, length=9), C.Cmd.FLUSH, b""),
    "trim": (dict(cmd=C.Cmd.TRIM, offset=0, length=SIZE), C.Cmd.TRIM, b""),
    "write-zeroes": (dict(cmd=C.Cmd.WRITE_ZEROES, offset=5, length=10), C.Cmd.WRITE_ZEROES, b""),
    "write-zeroes-no-hole-fua": (
        dict(cmd=C.Cmd.WRITE_ZEROES, offset=0, length=4096, flags=3),
        C.Cmd.WRITE_ZEROES,
        b"",
    ),
}


@pytest.mark.parametrize("case", COMMAND_CASES, ids=list(COMMAND_CASES))
def test_commands(case: str) -> None:
    spec, kind, data = COMMAND_CASES[case]
    spec = dict(spec)
    cmd = spec.pop("cmd")
    conn = transmitting()
    (event,) = conn.receive_data(messages.request(cmd, cookie=0xDEADBEEF_00000001, **spec))
    assert isinstance(event, events.Command)
    assert event.type is kind
    assert event.cookie == 0xDEADBEEF_00000001
    assert event.data == data
    assert event.offset == spec.get("offset", 0)
    assert event.length == (len(data) if data else spec.get("length", 0))
    assert event.fua == bool(spec.get("flags", 0) & 1)
    assert event.no_hole == bool(spec.get("flags", 0) & 2)
    assert conn.data_to_send() == []


REFUSED_CASES = {
    "read-past-end": (dict(cmd=C.Cmd.READ, offset=SIZE - 1, length=2), C.Errno.EINVAL),
    "read-offset-huge": (dict(cmd=C.Cmd.READ, offset=2**64 - 1, length=1), C.Errno.EINVAL),
    "read-too-long": (dict(cmd=C.Cmd.READ, offset=0, length=32 * 1024 * 1024 + 1), C.Errno.EINVAL),
    "read-unknown-flag-bit": (dict(cmd=C.Cmd.READ, offset=0, length=1, flags=0x8000), C.Errno.EINVAL),
    "read-df-not-negotiated": (dict(cmd=C.Cmd.READ, offset=0, length=1, flags=4), C.Errno.EINVAL),
    "write-past-end": (dict(cmd=C.Cmd.WRITE, offset=SIZE - 1, data=b"ab"), C.Errno.ENOSPC),
    "write-no-hole-flag": (dict(cmd=C.Cmd.WRITE, offset=0, data=b"ab", flags=2), C.Errno.EINVAL),
    "trim-past-end": (dict(cmd=C.Cmd.TRIM, offset=SIZE, length=1), C.Errno.EINVAL),
    "write-zeroes-past-end": (dict(cmd=C.Cmd.WRITE_ZEROES, offset=SIZE - 1, length=2), C.Errno.ENOSPC),
    "write-zeroes-fast-zero": (dict(cmd=C.Cmd.WRITE_ZEROES, offset=0, length=1, flags=16), C.Errno.EINVAL),
    "cache": (dict(cmd=C.Cmd.CACHE, offset=0, length=1), C.Errno.EINVAL),
    "block-status": (dict(cmd=C.Cmd.BLOCK_STATUS, offset=0, length=1), C.Errno.EINVAL),
    "unknown-command": (dict(cmd=999, offset=0, length=1), C.Errno.EINVAL),
    "zero-length-read": (dict(cmd=C.Cmd.READ, offset=0, length=0), C.Errno.OK),
}


@pytest.mark.parametrize("case", REFUSED_CASES, ids=list(REFUSED_CASES))
def test_requests_answered_by_the_connection(case: str) -> None:
    spec, error = REFUSED_CASES[case]
    spec = dict(spec)
    cmd = spec.pop("cmd")
    conn = transmitting()
    follow_up = messages.request(C.Cmd.FLUSH, cookie=2)
    evs = conn.receive_data(messages.request(cmd, cookie=1, **spec) + follow_up)
    assert isinstance(evs[0], events.Answered)
    assert (evs[0].cookie, evs[0].error) == (1, error)
    assert conn.data_to_send() == [messages.simple_reply(1, error)]
    # A refused WRITE's payload was consumed: the next request parses.
    assert isinstance(evs[1], events.Command) and evs[1].cookie == 2


def test_simple_reply_golden_bytes() -> None:
    assert messages.simple_reply(0x0102030405060708, 22).hex() == "67446698000000160102030405060708"


def test_request_golden_bytes() -> None:
    raw = messages.request(C.Cmd.WRITE, cookie=9, offset=4096, data=b"\xab\xcd", flags=1)
    assert raw.hex() == "25609513000100010000000000000009000000000000100000000002abcd"


def test_write_payload_split_across_feeds() -> None:
    conn = transmitting()
    payload = bytes(range(256)) * 300
    stream = messages.request(C.Cmd.WRITE, cookie=5, offset=100, data=payload)
    evs = []
    for i in range(0, len(stream), 1000):
        evs += conn.receive_data(stream[i : i + 1000])
    assert len(evs) == 1 and isinstance(evs[0], events.Command)
    assert evs[0].data == payload


def test_large_write_is_copied_once_and_parsed() -> None:
    conn = transmitting()
    payload = b"\x5a" * (1024 * 1024)
    (event,) = conn.receive_data(messages.request(C.Cmd.WRITE, cookie=5, offset=0, data=payload))
    assert isinstance(event, events.Command) and event.data == payload and type(event.data) is bytes


def test_oversized_write_closes() -> None:
    header = struct.pack(">IHHQQI", C.REQUEST_MAGIC, 0, C.Cmd.WRITE, 1, 0, 32 * 1024 * 1024 + 1)
    with pytest.raises(errors.ProtocolError, match="exceeds"):
        transmitting().receive_data(header)


def test_bad_request_magic_closes() -> None:
    raw = bytearray(messages.request(C.Cmd.READ, cookie=1, length=1))
    raw[0] ^= 0xFF
    with pytest.raises(errors.ProtocolError, match="magic"):
        transmitting().receive_data(bytes(raw))


def test_disconnect_ignores_later_data() -> None:
    conn = transmitting()
    evs = conn.receive_data(messages.request(C.Cmd.DISC, cookie=1) + b"garbage after disc")
    assert evs == [events.Disconnect(during_handshake=False)]
    assert conn.state is connection.State.DONE
    assert conn.receive_data(b"more") == []


def test_shutdown_answers_eshutdown() -> None:
    conn = transmitting()
    conn.begin_shutdown()
    (event,) = conn.receive_data(messages.request(C.Cmd.READ, cookie=3, length=1))
    assert isinstance(event, events.Answered) and event.error is C.Errno.ESHUTDOWN


@pytest.mark.parametrize(
    ("exc", "errno"),
    [
        (errors.OutOfRange("x"), C.Errno.EINVAL),
        (errors.InvalidArgument("x"), C.Errno.EINVAL),
        (errors.NoSpace("x"), C.Errno.ENOSPC),
        (errors.NotSupported("x"), C.Errno.ENOTSUP),
        (errors.StorageIOError("x"), C.Errno.EIO),
        (errors.Unavailable("x"), C.Errno.EIO),
        (errors.Internal("x"), C.Errno.EIO),
        (RuntimeError("x"), C.Errno.EIO),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_errno_mapping(exc: BaseException, errno: C.Errno) -> None:
    assert messages.errno_for(exc) is errno


# -- round trip and fuzz ---------------------------------------------------------------------------------

valid_requests = st.one_of(
    st.builds(
        lambda c, o, n, f: (C.Cmd.READ, c, o, n, f, b""),
        st.integers(0, 2**64 - 1),
        st.integers(0, SIZE - 4096),
        st.integers(1, 4096),
        st.sampled_from([0, 1]),
    ),
    st.builds(
        lambda c, o, d, f: (C.Cmd.WRITE, c, o, len(d), f, d),
        st.integers(0, 2**64 - 1),
        st.integers(0, SIZE - 600),
        st.binary(min_size=1, max_size=512),
        st.sampled_from([0, 1]),
    ),
    st.builds(lambda c: (C.Cmd.FLUSH, c, 0, 0, 0, b""), st.integers(0, 2**64 - 1)),
    st.builds(
        lambda c, o, f: (C.Cmd.WRITE_ZEROES, c, o, 100, f, b""),
        st.integers(0, 2**64 - 1),
        st.integers(0, SIZE - 100),
        st.sampled_from([0, 1, 2, 3]),
    ),
    st.builds(lambda c, o: (C.Cmd.TRIM, c, o, 7, 0, b""), st.integers(0, 2**64 - 1), st.integers(0, SIZE - 7)),
)


@given(st.lists(valid_requests, max_size=12), st.integers(1, 700))
def test_requests_round_trip_in_any_chunking(items: list[tuple[C.Cmd, int, int, int, int, bytes]], chunk: int) -> None:
    stream = b"".join(
        messages.request(kind, cookie=cookie, offset=offset, length=length, flags=flags, data=data)
        for kind, cookie, offset, length, flags, data in items
    )
    conn = transmitting()
    out: list[events.Event] = []
    for i in range(0, len(stream), chunk):
        out += conn.receive_data(stream[i : i + chunk])
    assert out == [
        events.Command(type=kind, flags=flags, cookie=cookie, offset=offset, length=length, data=data)
        for kind, cookie, offset, length, flags, data in items
    ]
    assert conn.data_to_send() == []


@settings(max_examples=300)
@given(st.binary(max_size=400), st.sampled_from(["flags", "options", "transmission"]))
def test_random_bytes_raise_only_protocol_error(data: bytes, phase: str) -> None:
    if phase == "flags":
        conn = connection.ServerConnection(EXPORT)
        conn.initiate()
    else:
        conn = negotiating() if phase == "options" else transmitting()
    try:
        conn.receive_data(data)
    except errors.ProtocolError:
        return
    for chunk in conn.data_to_send():
        assert isinstance(chunk, bytes)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 12), st.integers(0, 2**64 - 1), st.integers(0, 2**33)),
        max_size=6,
    )
)
def test_random_well_framed_requests_never_crash(items: list[tuple[int, int, int, int]]) -> None:
    """Right magic, arbitrary flags/type/offset/length: each is a Command, Answered, Disconnect or closes."""
    stream = b"".join(
        struct.pack(">IHHQQI", C.REQUEST_MAGIC, flags, kind, 1, offset, min(length, 2**32 - 1))
        + (bytes(min(length, 64)) if kind == C.Cmd.WRITE else b"")
        for flags, kind, offset, length in items
    )
    conn = transmitting()
    try:
        for event in conn.receive_data(stream):
            if isinstance(event, events.Command):
                assert (event.offset + event.length <= SIZE and event.length > 0) or event.type is C.Cmd.FLUSH
    except errors.ProtocolError:
        pass
