"""The BGP finite state machine of RFC 4271 section 8, as an enforced transition table.

``TABLE[(state, event)] = (next state, steps)`` is the whole machine: ``Fsm.handle`` looks the pair up and an
absent pair raises ``IllegalTransition`` (h11 style: the table is enforced, not decorative). Steps expand into
action values (``SendOpen``, ``SendNotification(code, subcode, data)``, ``StartTimer(name, seconds)``, ...) that
the asyncio session carries out; nothing here does I/O or reads a clock. Timers are deadlines kept here:
``poll(now)`` yields the due timer events (handle each before asking for the next), ``next_deadline()`` says
when to wake up.

What is legal. The table follows section 8.2.2 with the optional attributes DelayOpen, passive TCP
establishment, peer oscillation damping and CollisionDetectEstablishedState off, with these deliberate choices:
  * Events the RFC says are "ignored" (a second ManualStart, a stop in Idle, a second TCP connection while
    OpenSent/OpenConfirm/Established, whose collision the session resolves) are legal no-ops.
  * Events that cannot happen when the session shell is correct are illegal: a timer event for a timer that is
    not running, a BGP message before the TCP connection exists (Idle, Connect, Active). The RFC folds these
    into "any other event"; here they raise so a shell bug shows at once instead of resetting the peer.
  * An unexpected message in OpenSent/OpenConfirm/Established is the RFC's FSM Error, with the RFC 6608
    subcode for the state. A received NOTIFICATION is never answered with one.
  * A TCP connection that completes or arrives in Idle is dropped (Idle refuses connections).
  * Entering Idle stops every timer: restarting after a fault (IdleHoldTimer, back-off) is the session's
    policy, expressed by sending AutomaticStart later.
  * ROUTE-REFRESH (RFC 2918) is not an RFC 4271 event; RouteRefreshMsg is added: Established only.

Hold time (section 4.2): the negotiated hold time is min(ours, peer's); 0 means no hold timer and no
keepalives; the keepalive interval is hold/3 unless configured (a configured interval >= hold is ignored).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator

from metalhorn.common import errors as mh_errors
from metalhorn.lb.bgp.messages import errors, simple


class State(enum.Enum):
    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPEN_SENT = "OpenSent"
    OPEN_CONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


class Event(enum.Enum):
    """RFC 4271 section 8.1 events (numbers in comments); DelayOpen/damping/passive events are not used."""

    MANUAL_START = "ManualStart"  # 1
    MANUAL_STOP = "ManualStop"  # 2
    AUTOMATIC_START = "AutomaticStart"  # 3
    AUTOMATIC_STOP = "AutomaticStop"  # 8
    CONNECT_RETRY_TIMER_EXPIRES = "ConnectRetryTimer_Expires"  # 9
    HOLD_TIMER_EXPIRES = "HoldTimer_Expires"  # 10
    KEEPALIVE_TIMER_EXPIRES = "KeepaliveTimer_Expires"  # 11
    TCP_CR_ACKED = "Tcp_CR_Acked"  # 16: our outgoing connection completed
    TCP_CONNECTION_CONFIRMED = "TcpConnectionConfirmed"  # 17: the peer's incoming connection was accepted
    TCP_CONNECTION_FAILS = "TcpConnectionFails"  # 18
    BGP_OPEN = "BGPOpen"  # 19: a valid OPEN (handle needs peer_hold_time)
    BGP_HEADER_ERR = "BGPHeaderErr"  # 21 (handle needs the notification to send)
    BGP_OPEN_MSG_ERR = "BGPOpenMsgErr"  # 22 (handle needs the notification to send)
    OPEN_COLLISION_DUMP = "OpenCollisionDump"  # 23
    NOTIF_MSG_VER_ERR = "NotifMsgVerErr"  # 24
    NOTIF_MSG = "NotifMsg"  # 25
    KEEPALIVE_MSG = "KeepAliveMsg"  # 26
    UPDATE_MSG = "UpdateMsg"  # 27
    UPDATE_MSG_ERR = "UpdateMsgErr"  # 28 (handle needs the notification to send)
    ROUTE_REFRESH_MSG = "RouteRefreshMsg"  # not in RFC 4271: RFC 2918 message, legal in Established only


class Timer(enum.Enum):
    CONNECT_RETRY = "ConnectRetryTimer"
    HOLD = "HoldTimer"
    KEEPALIVE = "KeepaliveTimer"


_TIMER_EVENTS = {
    Timer.CONNECT_RETRY: Event.CONNECT_RETRY_TIMER_EXPIRES,
    Timer.HOLD: Event.HOLD_TIMER_EXPIRES,
    Timer.KEEPALIVE: Event.KEEPALIVE_TIMER_EXPIRES,
}


# -- actions: what the session must do, as values -------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class InitiateConnection:
    """Open a TCP connection to the peer (and keep accepting its connections)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DropConnection:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseResources:
    """Forget the peer's routes and session state (RFC 4271 "releases all BGP resources")."""


@dataclasses.dataclass(frozen=True, slots=True)
class SendOpen:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class SendKeepalive:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class SendNotification:
    code: int
    subcode: int
    data: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class StartTimer:
    """Informational: the Fsm already holds the deadline (``now + seconds``)."""

    timer: Timer
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class StopTimer:
    timer: Timer


Action = (
    InitiateConnection
    | DropConnection
    | ReleaseResources
    | SendOpen
    | SendKeepalive
    | SendNotification
    | StartTimer
    | StopTimer
)


class IllegalTransition(mh_errors.Internal):
    """The session fed an event that cannot happen in this state: a bug in the shell, not in the peer."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"BGP FSM: event {event.value} is illegal in state {state.value}")
        self.state = state
        self.event = event


# -- the table ------------------------------------------------------------------------------------------------


class Step(enum.Enum):
    START_CONNECT_RETRY = enum.auto()
    STOP_CONNECT_RETRY = enum.auto()
    START_OPEN_HOLD = enum.auto()  # the "large value" of section 8.2.2 while waiting for the peer's OPEN
    STOP_HOLD = enum.auto()
    NEGOTIATE = enum.auto()  # hold time from both OPENs; start keepalive and hold timers unless it is 0
    RESTART_HOLD = enum.auto()
    RESTART_KEEPALIVE = enum.auto()
    INITIATE = enum.auto()
    DROP = enum.auto()
    RELEASE = enum.auto()
    SEND_OPEN = enum.auto()
    SEND_KEEPALIVE = enum.auto()
    NOTIFY_CEASE = enum.auto()  # the given notification, else Cease/Administrative Shutdown (RFC 4486)
    NOTIFY_HOLD_EXPIRED = enum.auto()
    NOTIFY_COLLISION = enum.auto()
    NOTIFY_ERROR = enum.auto()  # the notification the decoder's BgpError asked for
    NOTIFY_FSM_ERROR = enum.auto()  # RFC 6608 subcode of the current state
    COUNTER_ZERO = enum.auto()
    COUNTER_INC = enum.auto()


S, E, T = State, Event, Step
Transition = tuple[State, tuple[Step, ...]]

_CONNECTED = (T.STOP_CONNECT_RETRY, T.SEND_OPEN, T.START_OPEN_HOLD)
_MANUAL_STOP = (T.NOTIFY_CEASE, T.RELEASE, T.DROP, T.COUNTER_ZERO)
_AUTOMATIC_STOP = (T.NOTIFY_CEASE, T.RELEASE, T.DROP, T.COUNTER_INC)
_HOLD_EXPIRED = (T.NOTIFY_HOLD_EXPIRED, T.RELEASE, T.DROP, T.COUNTER_INC)
_ERROR = (T.NOTIFY_ERROR, T.RELEASE, T.DROP, T.COUNTER_INC)
_FSM_ERROR = (T.NOTIFY_FSM_ERROR, T.RELEASE, T.DROP, T.COUNTER_INC)
_COLLISION = (T.NOTIFY_COLLISION, T.RELEASE, T.DROP, T.COUNTER_INC)
_PEER_GONE = (T.RELEASE, T.DROP, T.COUNTER_INC)


def _table() -> dict[tuple[State, Event], Transition]:
    table: dict[tuple[State, Event], Transition] = {}

    def add(state: State, events: tuple[Event, ...], target: State, steps: tuple[Step, ...] = ()) -> None:
        for event in events:
            assert (state, event) not in table, (state, event)
            table[state, event] = (target, steps)

    starts = (E.MANUAL_START, E.AUTOMATIC_START)
    tcp_up = (E.TCP_CR_ACKED, E.TCP_CONNECTION_CONFIRMED)

    # Idle (8.2.2): a start initiates the connection; stops are ignored; connections are refused.
    add(S.IDLE, starts, S.CONNECT, (T.COUNTER_ZERO, T.START_CONNECT_RETRY, T.INITIATE))
    add(S.IDLE, (E.MANUAL_STOP, E.AUTOMATIC_STOP, E.TCP_CONNECTION_FAILS), S.IDLE)
    add(S.IDLE, tcp_up, S.IDLE, (T.DROP,))

    # Connect: waiting for TCP.
    add(S.CONNECT, starts, S.CONNECT)
    add(S.CONNECT, (E.MANUAL_STOP,), S.IDLE, (T.DROP, T.RELEASE, T.COUNTER_ZERO))
    add(S.CONNECT, (E.AUTOMATIC_STOP,), S.IDLE, (T.DROP, T.RELEASE, T.COUNTER_INC))
    add(S.CONNECT, (E.CONNECT_RETRY_TIMER_EXPIRES,), S.CONNECT, (T.DROP, T.START_CONNECT_RETRY, T.INITIATE))
    add(S.CONNECT, tcp_up, S.OPEN_SENT, _CONNECTED)
    add(S.CONNECT, (E.TCP_CONNECTION_FAILS,), S.IDLE, (T.DROP, T.RELEASE))

    # Active: listening after a failed attempt, retrying when the ConnectRetryTimer fires.
    add(S.ACTIVE, starts, S.ACTIVE)
    add(S.ACTIVE, (E.MANUAL_STOP,), S.IDLE, (T.DROP, T.RELEASE, T.COUNTER_ZERO))
    add(S.ACTIVE, (E.AUTOMATIC_STOP,), S.IDLE, (T.DROP, T.RELEASE, T.COUNTER_INC))
    add(S.ACTIVE, (E.CONNECT_RETRY_TIMER_EXPIRES,), S.CONNECT, (T.START_CONNECT_RETRY, T.INITIATE))
    add(S.ACTIVE, tcp_up, S.OPEN_SENT, _CONNECTED)
    add(S.ACTIVE, (E.TCP_CONNECTION_FAILS,), S.IDLE, (T.RELEASE, T.COUNTER_INC))

    # OpenSent: our OPEN is out, waiting for the peer's.
    add(S.OPEN_SENT, starts + tcp_up, S.OPEN_SENT)
    add(S.OPEN_SENT, (E.MANUAL_STOP,), S.IDLE, _MANUAL_STOP)
    add(S.OPEN_SENT, (E.AUTOMATIC_STOP,), S.IDLE, _AUTOMATIC_STOP)
    add(S.OPEN_SENT, (E.HOLD_TIMER_EXPIRES,), S.IDLE, _HOLD_EXPIRED)
    add(S.OPEN_SENT, (E.TCP_CONNECTION_FAILS,), S.ACTIVE, (T.DROP, T.STOP_HOLD, T.START_CONNECT_RETRY))
    add(S.OPEN_SENT, (E.BGP_OPEN,), S.OPEN_CONFIRM, (T.STOP_CONNECT_RETRY, T.SEND_KEEPALIVE, T.NEGOTIATE))
    add(S.OPEN_SENT, (E.BGP_HEADER_ERR, E.BGP_OPEN_MSG_ERR), S.IDLE, _ERROR)
    add(S.OPEN_SENT, (E.OPEN_COLLISION_DUMP,), S.IDLE, _COLLISION)
    add(S.OPEN_SENT, (E.NOTIF_MSG_VER_ERR,), S.IDLE, (T.RELEASE, T.DROP))
    add(S.OPEN_SENT, (E.NOTIF_MSG,), S.IDLE, _PEER_GONE)
    unexpected = (E.KEEPALIVE_MSG, E.UPDATE_MSG, E.UPDATE_MSG_ERR, E.ROUTE_REFRESH_MSG)
    add(S.OPEN_SENT, unexpected, S.IDLE, _FSM_ERROR)

    # OpenConfirm: both OPENs exchanged, waiting for the peer's first KEEPALIVE.
    add(S.OPEN_CONFIRM, starts + tcp_up, S.OPEN_CONFIRM)
    add(S.OPEN_CONFIRM, (E.MANUAL_STOP,), S.IDLE, _MANUAL_STOP)
    add(S.OPEN_CONFIRM, (E.AUTOMATIC_STOP,), S.IDLE, _AUTOMATIC_STOP)
    add(S.OPEN_CONFIRM, (E.HOLD_TIMER_EXPIRES,), S.IDLE, _HOLD_EXPIRED)
    add(S.OPEN_CONFIRM, (E.KEEPALIVE_TIMER_EXPIRES,), S.OPEN_CONFIRM, (T.SEND_KEEPALIVE, T.RESTART_KEEPALIVE))
    add(S.OPEN_CONFIRM, (E.TCP_CONNECTION_FAILS, E.NOTIF_MSG), S.IDLE, _PEER_GONE)
    add(S.OPEN_CONFIRM, (E.NOTIF_MSG_VER_ERR,), S.IDLE, (T.RELEASE, T.DROP))
    add(S.OPEN_CONFIRM, (E.BGP_HEADER_ERR, E.BGP_OPEN_MSG_ERR), S.IDLE, _ERROR)
    add(S.OPEN_CONFIRM, (E.OPEN_COLLISION_DUMP,), S.IDLE, _COLLISION)
    add(S.OPEN_CONFIRM, (E.KEEPALIVE_MSG,), S.ESTABLISHED, (T.RESTART_HOLD,))
    add(S.OPEN_CONFIRM, (E.BGP_OPEN, E.UPDATE_MSG, E.UPDATE_MSG_ERR, E.ROUTE_REFRESH_MSG), S.IDLE, _FSM_ERROR)

    # Established: routes flow.
    add(S.ESTABLISHED, starts + tcp_up, S.ESTABLISHED)
    add(S.ESTABLISHED, (E.MANUAL_STOP,), S.IDLE, _MANUAL_STOP)
    add(S.ESTABLISHED, (E.AUTOMATIC_STOP,), S.IDLE, _AUTOMATIC_STOP)
    add(S.ESTABLISHED, (E.HOLD_TIMER_EXPIRES,), S.IDLE, _HOLD_EXPIRED)
    add(S.ESTABLISHED, (E.KEEPALIVE_TIMER_EXPIRES,), S.ESTABLISHED, (T.SEND_KEEPALIVE, T.RESTART_KEEPALIVE))
    add(S.ESTABLISHED, (E.OPEN_COLLISION_DUMP,), S.IDLE, _COLLISION)
    add(S.ESTABLISHED, (E.NOTIF_MSG_VER_ERR, E.NOTIF_MSG, E.TCP_CONNECTION_FAILS), S.IDLE, _PEER_GONE)
    add(S.ESTABLISHED, (E.KEEPALIVE_MSG, E.UPDATE_MSG, E.ROUTE_REFRESH_MSG), S.ESTABLISHED, (T.RESTART_HOLD,))
    add(S.ESTABLISHED, (E.UPDATE_MSG_ERR, E.BGP_HEADER_ERR), S.IDLE, _ERROR)
    add(S.ESTABLISHED, (E.BGP_OPEN, E.BGP_OPEN_MSG_ERR), S.IDLE, _FSM_ERROR)
    return table


TABLE: dict[tuple[State, Event], Transition] = _table()

_FSM_SUBCODES = {
    S.OPEN_SENT: errors.FsmSubcode.UNEXPECTED_MESSAGE_IN_OPEN_SENT,
    S.OPEN_CONFIRM: errors.FsmSubcode.UNEXPECTED_MESSAGE_IN_OPEN_CONFIRM,
    S.ESTABLISHED: errors.FsmSubcode.UNEXPECTED_MESSAGE_IN_ESTABLISHED,
}


# -- the machine ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    hold_time: int = 90  # what our OPEN proposes; 0 or >= 3
    keepalive_time: int | None = None  # None: a third of the negotiated hold time
    connect_retry_time: float = 120.0  # RFC 4271 section 10 suggests 120 s
    open_hold_time: int = 240  # section 8.2.2: "a large value", 4 minutes suggested

    def __post_init__(self) -> None:
        if self.hold_time in (1, 2) or not 0 <= self.hold_time <= 0xFFFF:
            raise mh_errors.InvalidArgument(f"hold time {self.hold_time}: use 0 or 3..65535 seconds")
        if self.keepalive_time is not None and self.keepalive_time < 1:
            raise mh_errors.InvalidArgument(f"keepalive time {self.keepalive_time}: use 1 second or more")


def negotiate(*, local_hold: int, peer_hold: int, keepalive: int | None) -> tuple[int, int]:
    """(hold time, keepalive interval) after both OPENs (RFC 4271 sections 4.2 and 10)."""
    hold = min(local_hold, peer_hold)
    if hold == 0:
        return 0, 0
    if keepalive is not None and keepalive < hold:
        return hold, keepalive
    return hold, max(1, hold // 3)


class Fsm:
    """One BGP connection's state machine. Pure: feed events with the current time, carry out the actions."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.state = State.IDLE
        self.connect_retry_counter = 0
        self.hold_time = 0  # negotiated; valid from OpenConfirm on
        self.keepalive_time = 0
        self._deadlines: dict[Timer, float] = {}

    def deadline(self, timer: Timer) -> float | None:
        return self._deadlines.get(timer)

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def poll(self, now: float) -> Iterator[Event]:
        """Yield the due timer events, earliest first; handle each before taking the next one."""
        while True:
            due = [(deadline, timer) for timer, deadline in self._deadlines.items() if deadline <= now]
            if not due:
                return
            _, timer = min(due, key=lambda item: item[0])
            del self._deadlines[timer]
            yield _TIMER_EVENTS[timer]

    def expire(self, now: float) -> list[Action]:
        """Handle every due timer event; the actions of all of them in order."""
        actions: list[Action] = []
        for event in self.poll(now):
            actions += self.handle(event, now=now)
        return actions

    def handle(
        self,
        event: Event,
        *,
        now: float,
        peer_hold_time: int | None = None,
        notification: simple.Notification | None = None,
    ) -> list[Action]:
        """Apply one event. BGPOpen needs ``peer_hold_time``; the *Err events need the ``notification`` to
        send (``Notification.from_error(exc)``); stops may pass one to replace Cease/Administrative Shutdown."""
        transition = TABLE.get((self.state, event))
        if transition is None:
            raise IllegalTransition(self.state, event)
        target, steps = transition
        if T.NEGOTIATE in steps and peer_hold_time is None:
            raise mh_errors.InvalidArgument("BGPOpen needs the peer's hold time")
        if T.NOTIFY_ERROR in steps and notification is None:
            raise mh_errors.InvalidArgument(f"{event.value} needs the notification the decoder asked for")
        actions: list[Action] = []
        for step in steps:
            self._apply(step, actions, now=now, peer_hold_time=peer_hold_time, notification=notification)
        if target is State.IDLE:
            for timer in Timer:
                self._stop(timer, actions)
        self.state = target
        return actions

    def _start(self, timer: Timer, seconds: float, now: float, actions: list[Action]) -> None:
        self._deadlines[timer] = now + seconds
        actions.append(StartTimer(timer, seconds))

    def _stop(self, timer: Timer, actions: list[Action]) -> None:
        if self._deadlines.pop(timer, None) is not None:
            actions.append(StopTimer(timer))

    def _apply(
        self,
        step: Step,
        actions: list[Action],
        *,
        now: float,
        peer_hold_time: int | None,
        notification: simple.Notification | None,
    ) -> None:
        config = self.config
        if step is T.START_CONNECT_RETRY:
            self._start(Timer.CONNECT_RETRY, config.connect_retry_time, now, actions)
        elif step is T.STOP_CONNECT_RETRY:
            self._stop(Timer.CONNECT_RETRY, actions)
        elif step is T.START_OPEN_HOLD:
            self._start(Timer.HOLD, config.open_hold_time, now, actions)
        elif step is T.STOP_HOLD:
            self._stop(Timer.HOLD, actions)
        elif step is T.NEGOTIATE:
            assert peer_hold_time is not None
            self.hold_time, self.keepalive_time = negotiate(
                local_hold=config.hold_time, peer_hold=peer_hold_time, keepalive=config.keepalive_time
            )
            if self.hold_time:
                self._start(Timer.KEEPALIVE, self.keepalive_time, now, actions)
                self._start(Timer.HOLD, self.hold_time, now, actions)
            else:
                self._stop(Timer.KEEPALIVE, actions)
                self._stop(Timer.HOLD, actions)
        elif step is T.RESTART_HOLD:
            if self.hold_time:
                self._start(Timer.HOLD, self.hold_time, now, actions)
        elif step is T.RESTART_KEEPALIVE:
            if self.keepalive_time:
                self._start(Timer.KEEPALIVE, self.keepalive_time, now, actions)
        elif step is T.INITIATE:
            actions.append(InitiateConnection())
        elif step is T.DROP:
            actions.append(DropConnection())
        elif step is T.RELEASE:
            actions.append(ReleaseResources())
        elif step is T.SEND_OPEN:
            actions.append(SendOpen())
        elif step is T.SEND_KEEPALIVE:
            actions.append(SendKeepalive())
        elif step is T.NOTIFY_CEASE:
            chosen = notification or simple.Notification(
                errors.ErrorCode.CEASE, errors.CeaseSubcode.ADMINISTRATIVE_SHUTDOWN
            )
            actions.append(SendNotification(chosen.code, chosen.subcode, chosen.data))
        elif step is T.NOTIFY_HOLD_EXPIRED:
            actions.append(SendNotification(errors.ErrorCode.HOLD_TIMER_EXPIRED, 0))
        elif step is T.NOTIFY_COLLISION:
            actions.append(
                SendNotification(errors.ErrorCode.CEASE, errors.CeaseSubcode.CONNECTION_COLLISION_RESOLUTION)
            )
        elif step is T.NOTIFY_ERROR:
            assert notification is not None
            actions.append(SendNotification(notification.code, notification.subcode, notification.data))
        elif step is T.NOTIFY_FSM_ERROR:
            actions.append(SendNotification(errors.ErrorCode.FSM, _FSM_SUBCODES[self.state]))
        elif step is T.COUNTER_ZERO:
            self.connect_retry_counter = 0
        elif step is T.COUNTER_INC:
            self.connect_retry_counter += 1
