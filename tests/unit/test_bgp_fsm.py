"""The RFC 4271 section 8 FSM: every illegal edge raises, every legal edge lands where the table says, and the
paths a real session takes produce exactly the expected actions and timers."""

from __future__ import annotations

import pytest

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp import fsm
from metalhorn.lb.bgp.messages import errors, simple

S, E = fsm.State, fsm.Event
NOW = 1000.0

# Events that drive a fresh Fsm from Idle into each state (with peer_hold_time for BGPOpen).
PATHS: dict[fsm.State, list[fsm.Event]] = {
    S.IDLE: [],
    S.CONNECT: [E.MANUAL_START],
    S.ACTIVE: [E.MANUAL_START, E.TCP_CR_ACKED, E.TCP_CONNECTION_FAILS],
    S.OPEN_SENT: [E.MANUAL_START, E.TCP_CR_ACKED],
    S.OPEN_CONFIRM: [E.MANUAL_START, E.TCP_CR_ACKED, E.BGP_OPEN],
    S.ESTABLISHED: [E.MANUAL_START, E.TCP_CR_ACKED, E.BGP_OPEN, E.KEEPALIVE_MSG],
}
NOTIFICATION = simple.Notification(errors.ErrorCode.UPDATE_MESSAGE, errors.UpdateSubcode.MALFORMED_AS_PATH)


def machine_in(state: fsm.State) -> fsm.Fsm:
    machine = fsm.Fsm(fsm.Config(hold_time=90))
    for event in PATHS[state]:
        machine.handle(event, now=NOW, peer_hold_time=90)
    assert machine.state is state
    return machine


ILLEGAL = [(s, e) for s in fsm.State for e in fsm.Event if (s, e) not in fsm.TABLE]
LEGAL = sorted(fsm.TABLE, key=lambda pair: (list(fsm.State).index(pair[0]), list(fsm.Event).index(pair[1])))


def test_the_table_has_both_kinds_of_edges() -> None:
    assert len(ILLEGAL) + len(LEGAL) == len(fsm.State) * len(fsm.Event)
    assert (S.IDLE, E.UPDATE_MSG) in ILLEGAL and (S.ESTABLISHED, E.UPDATE_MSG) in LEGAL


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s.value}-{e.value}" for s, e in ILLEGAL])
def test_illegal_edge_raises_and_changes_nothing(state: fsm.State, event: fsm.Event) -> None:
    machine = machine_in(state)
    deadlines = {t: machine.deadline(t) for t in fsm.Timer}
    counter = machine.connect_retry_counter
    with pytest.raises(fsm.IllegalTransition) as caught:
        machine.handle(event, now=NOW + 1, peer_hold_time=90, notification=NOTIFICATION)
    assert (caught.value.state, caught.value.event) == (state, event)
    assert isinstance(caught.value, mh_errors.MetalhornError)
    assert machine.state is state
    assert {t: machine.deadline(t) for t in fsm.Timer} == deadlines
    assert machine.connect_retry_counter == counter


@pytest.mark.parametrize(("state", "event"), LEGAL, ids=[f"{s.value}-{e.value}" for s, e in LEGAL])
def test_legal_edge_lands_where_the_table_says(state: fsm.State, event: fsm.Event) -> None:
    machine = machine_in(state)
    actions = machine.handle(event, now=NOW + 1, peer_hold_time=90, notification=NOTIFICATION)
    target, steps = fsm.TABLE[state, event]
    assert machine.state is target
    if target is S.IDLE:
        assert machine.next_deadline() is None  # Idle holds no timers
    sends = [a for a in actions if isinstance(a, fsm.SendNotification)]
    assert len(sends) <= 1
    if fsm.Step.NOTIFY_ERROR in steps:
        assert sends == [fsm.SendNotification(3, 11)]  # exactly what the decoder asked for
    if fsm.Step.NOTIFY_FSM_ERROR in steps:
        assert sends[0].code == errors.ErrorCode.FSM
    if event in (E.NOTIF_MSG, E.NOTIF_MSG_VER_ERR):
        assert not sends  # never answer a NOTIFICATION with one


def test_full_path_to_established_and_back() -> None:
    machine = fsm.Fsm(fsm.Config(hold_time=90, connect_retry_time=120))
    T = fsm.Timer
    assert machine.handle(E.MANUAL_START, now=0) == [fsm.StartTimer(T.CONNECT_RETRY, 120), fsm.InitiateConnection()]
    assert machine.state is S.CONNECT and machine.deadline(T.CONNECT_RETRY) == 120
    assert machine.handle(E.TCP_CR_ACKED, now=1) == [
        fsm.StopTimer(T.CONNECT_RETRY),
        fsm.SendOpen(),
        fsm.StartTimer(T.HOLD, 240),
    ]
    assert machine.state is S.OPEN_SENT and machine.deadline(T.HOLD) == 241
    assert machine.handle(E.BGP_OPEN, now=2, peer_hold_time=30) == [
        fsm.SendKeepalive(),
        fsm.StartTimer(T.KEEPALIVE, 10),
        fsm.StartTimer(T.HOLD, 30),
    ]
    assert (machine.state, machine.hold_time, machine.keepalive_time) == (S.OPEN_CONFIRM, 30, 10)
    assert machine.handle(E.KEEPALIVE_MSG, now=3) == [fsm.StartTimer(T.HOLD, 30)]
    assert machine.state is S.ESTABLISHED
    assert machine.handle(E.UPDATE_MSG, now=4) == [fsm.StartTimer(T.HOLD, 30)]
    assert machine.deadline(T.HOLD) == 34
    assert machine.handle(E.MANUAL_STOP, now=5) == [
        fsm.SendNotification(errors.ErrorCode.CEASE, errors.CeaseSubcode.ADMINISTRATIVE_SHUTDOWN),
        fsm.ReleaseResources(),
        fsm.DropConnection(),
        fsm.StopTimer(T.HOLD),
        fsm.StopTimer(T.KEEPALIVE),
    ]
    assert machine.state is S.IDLE and machine.next_deadline() is None
    assert machine.connect_retry_counter == 0
    machine.handle(E.AUTOMATIC_START, now=6)  # and it can start again
    assert machine.state is S.CONNECT


def test_keepalives_and_hold_expiry_through_poll() -> None:
    machine = machine_in(S.OPEN_SENT)
    machine.handle(E.BGP_OPEN, now=0, peer_hold_time=9)
    machine.handle(E.KEEPALIVE_MSG, now=0)
    assert machine.next_deadline() == 3
    assert list(machine.poll(2.9)) == []
    assert machine.expire(3) == [fsm.SendKeepalive(), fsm.StartTimer(fsm.Timer.KEEPALIVE, 3)]
    assert machine.expire(6) == [fsm.SendKeepalive(), fsm.StartTimer(fsm.Timer.KEEPALIVE, 3)]
    # Nothing from the peer since t=0: at t=9 both timers are due; the hold timer goes first and ends it all.
    actions = machine.expire(9)
    assert actions[0] == fsm.SendNotification(errors.ErrorCode.HOLD_TIMER_EXPIRED, 0)
    assert fsm.SendKeepalive() not in actions
    assert machine.state is S.IDLE and machine.connect_retry_counter == 1


def test_poll_yields_one_due_event_at_a_time() -> None:
    machine = machine_in(S.CONNECT)
    events = machine.poll(NOW + 120)
    assert next(events) is E.CONNECT_RETRY_TIMER_EXPIRES
    assert machine.deadline(fsm.Timer.CONNECT_RETRY) is None
    machine.handle(E.CONNECT_RETRY_TIMER_EXPIRES, now=NOW + 120)
    assert machine.deadline(fsm.Timer.CONNECT_RETRY) == NOW + 240
    assert list(events) == []


@pytest.mark.parametrize(
    ("local", "peer", "keepalive", "expected"),
    [
        (90, 30, None, (30, 10)),
        (90, 180, None, (90, 30)),
        (90, 0, None, (0, 0)),
        (0, 90, None, (0, 0)),
        (90, 90, 5, (90, 5)),
        (9, 90, 20, (9, 3)),  # a configured interval >= hold would let the peer's hold timer fire
        (3, 3, None, (3, 1)),
    ],
)
def test_hold_time_negotiation(local: int, peer: int, keepalive: int | None, expected: tuple[int, int]) -> None:
    assert fsm.negotiate(local_hold=local, peer_hold=peer, keepalive=keepalive) == expected


def test_zero_hold_time_runs_no_timers() -> None:
    machine = machine_in(S.OPEN_SENT)
    actions = machine.handle(E.BGP_OPEN, now=NOW, peer_hold_time=0)
    assert actions == [fsm.SendKeepalive(), fsm.StopTimer(fsm.Timer.HOLD)]
    machine.handle(E.KEEPALIVE_MSG, now=NOW)
    assert machine.next_deadline() is None
    assert list(machine.poll(NOW + 10**6)) == []


def test_error_events_send_the_decoders_notification() -> None:
    machine = machine_in(S.OPEN_SENT)
    error = errors.open_error(errors.OpenSubcode.BAD_PEER_AS, reason="test")
    actions = machine.handle(E.BGP_OPEN_MSG_ERR, now=NOW, notification=simple.Notification.from_error(error))
    assert actions[0] == fsm.SendNotification(2, 2)
    assert fsm.DropConnection() in actions and machine.state is S.IDLE
    with pytest.raises(mh_errors.InvalidArgument):
        machine_in(S.ESTABLISHED).handle(E.UPDATE_MSG_ERR, now=NOW)
    with pytest.raises(mh_errors.InvalidArgument):
        machine_in(S.OPEN_SENT).handle(E.BGP_OPEN, now=NOW)


@pytest.mark.parametrize(
    ("state", "subcode"),
    [(S.OPEN_SENT, 1), (S.OPEN_CONFIRM, 2), (S.ESTABLISHED, 3)],
)
def test_unexpected_message_is_an_rfc6608_fsm_error(state: fsm.State, subcode: int) -> None:
    machine = machine_in(state)
    event = E.UPDATE_MSG if state is not S.ESTABLISHED else E.BGP_OPEN
    assert machine.handle(event, now=NOW)[0] == fsm.SendNotification(errors.ErrorCode.FSM, subcode)


def test_stop_can_carry_its_own_cease_subcode() -> None:
    machine = machine_in(S.ESTABLISHED)
    reason = simple.Notification(errors.ErrorCode.CEASE, errors.CeaseSubcode.PEER_DECONFIGURED)
    actions = machine.handle(E.AUTOMATIC_STOP, now=NOW, notification=reason)
    assert actions[0] == fsm.SendNotification(6, 3)
    assert machine.connect_retry_counter == 1


def test_tcp_failure_in_open_sent_goes_active_and_retries() -> None:
    machine = machine_in(S.OPEN_SENT)
    actions = machine.handle(E.TCP_CONNECTION_FAILS, now=NOW)
    assert actions == [
        fsm.DropConnection(),
        fsm.StopTimer(fsm.Timer.HOLD),
        fsm.StartTimer(fsm.Timer.CONNECT_RETRY, 120),
    ]
    assert machine.state is S.ACTIVE
    assert machine.expire(NOW + 120) == [fsm.StartTimer(fsm.Timer.CONNECT_RETRY, 120), fsm.InitiateConnection()]
    assert machine.state is S.CONNECT


def test_config_rejects_bad_hold_times() -> None:
    with pytest.raises(mh_errors.InvalidArgument):
        fsm.Config(hold_time=2)
    with pytest.raises(mh_errors.InvalidArgument):
        fsm.Config(keepalive_time=0)
