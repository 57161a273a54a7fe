"""Replica modes and the pure decision of what one fanned-out operation's errors mean (no I/O).

The engine sends each write to every RW and WO replica and collects a per-replica error map, as longhorn-engine
does with its BackendError. This module turns (modes before, error map) into (modes after, mode changes, outcome
for the caller), so every rule is a table test of values:

1. A replica that fails an operation goes ERR: it missed a write (or could not serve a read), so its data can no
   longer be trusted without a rebuild.
2. I/O continues while at least one RW replica remains: the operation succeeded on a complete copy.
3. When every RW replica failed, the operation fails -- there is no complete copy that took it.
4. Except when every RW replica failed with the *same* error that describes the request rather than the replica
   (NoSpace above all, also InvalidArgument/OutOfRange/NotSupported): then they all stay RW and the caller gets
   that error. Nothing was acknowledged, all copies are still alike, and the volume must work again once space is
   freed. Marking them ERR would turn a full disk into a dead volume.
5. Errors from replicas that are already ERR are ignored; they no longer count.

Mode edges are an enforced table (`check_transition`): RW->ERR, WO->ERR, WO->RW (rebuild done), ERR->WO (rebuild
starts). ERR->RW is illegal: a replica comes back only through a rebuild.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from metalhorn.common import errors


class Mode(enum.Enum):
    RW = "RW"  # complete copy: takes writes, serves reads
    WO = "WO"  # rebuilding: takes writes, never serves reads
    ERR = "ERR"  # out of service until rebuilt


_LEGAL = frozenset(
    {
        (Mode.RW, Mode.ERR),
        (Mode.WO, Mode.ERR),
        (Mode.WO, Mode.RW),
        (Mode.ERR, Mode.WO),
    }
)

# Errors that say "this request cannot be done", the same on every healthy replica.
REQUEST_ERRORS = frozenset(
    {errors.ErrorCode.NO_SPACE, errors.ErrorCode.INVALID, errors.ErrorCode.OUT_OF_RANGE, errors.ErrorCode.NOT_SUPPORTED}
)


@dataclasses.dataclass(frozen=True)
class ModeChange:
    replica: str
    old: Mode
    new: Mode
    reason: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    modes: Mapping[str, Mode]  # every replica's mode after the operation
    changes: tuple[ModeChange, ...]  # in the order of the input modes
    error: errors.MetalhornError | None  # None: acknowledge the operation; else raise this to the caller

    @property
    def ok(self) -> bool:
        return self.error is None


def check_transition(old: Mode, new: Mode) -> None:
    """Raise InvalidArgument for a mode edge the engine must never take."""
    if (old, new) not in _LEGAL:
        raise errors.InvalidArgument(f"illegal replica mode change {old.value} -> {new.value}")


def describe(exc: errors.MetalhornError) -> str:
    return f"{exc.code.name}: {exc.message}"


def after_operation(modes: Mapping[str, Mode], failures: Mapping[str, errors.MetalhornError]) -> Outcome:
    """Decide modes and the caller's outcome after one operation sent to every RW/WO replica."""
    relevant = {name: exc for name, exc in failures.items() if modes.get(name) in (Mode.RW, Mode.WO)}
    rw = [name for name, mode in modes.items() if mode is Mode.RW]
    if not relevant:
        if rw:
            return Outcome(modes=dict(modes), changes=(), error=None)
        return Outcome(modes=dict(modes), changes=(), error=errors.Unavailable("no replica is in RW mode"))

    failed_rw = [name for name in rw if name in relevant]
    all_rw_failed = bool(rw) and len(failed_rw) == len(rw)
    codes = {relevant[name].code for name in failed_rw}
    spare_rw = all_rw_failed and len(codes) == 1 and next(iter(codes)) in REQUEST_ERRORS

    new_modes = dict(modes)
    changes = []
    for name, mode in modes.items():
        exc = relevant.get(name)
        if exc is None or (spare_rw and mode is Mode.RW):
            continue
        new_modes[name] = Mode.ERR
        changes.append(ModeChange(replica=name, old=mode, new=Mode.ERR, reason=describe(exc)))

    if spare_rw:
        first = relevant[failed_rw[0]]
        return Outcome(modes=new_modes, changes=tuple(changes), error=errors.from_code(first.code, first.message))
    if not all_rw_failed and rw:
        return Outcome(modes=new_modes, changes=tuple(changes), error=None)
    return Outcome(modes=new_modes, changes=tuple(changes), error=_all_failed(failed_rw, relevant))


def _all_failed(failed_rw: list[str], failures: Mapping[str, errors.MetalhornError]) -> errors.MetalhornError:
    if not failed_rw:
        return errors.Unavailable("no replica is in RW mode")
    detail = "; ".join(f"{name}: {describe(failures[name])}" for name in failed_rw)
    codes = {failures[name].code for name in failed_rw}
    code = next(iter(codes)) if len(codes) == 1 else errors.ErrorCode.IO
    return errors.from_code(code, f"every RW replica failed ({detail})")


@dataclasses.dataclass(frozen=True)
class ReplicaState:
    """What a replica reports at engine start (its CONTROL info)."""

    size: int
    revision: int
    chain: tuple[str, ...]  # snapshot chain, newest first, without the head file (head names may differ)
    rebuilding: bool = False
    # Opened with Dirty=true: its process died while serving, so its head may hold writes of a batch whose revision
    # never reached the disk (the counter is persisted per batch, before the replies). Unacknowledged writes, but
    # at an equal revision its data may differ from a peer's.
    unclean: bool = False


@dataclasses.dataclass(frozen=True)
class StartPlan:
    modes: Mapping[str, Mode]
    reasons: Mapping[str, str]  # why a replica is ERR ("" for RW)
    error: errors.MetalhornError | None  # refuse to start


def at_start(states: Mapping[str, ReplicaState | errors.MetalhornError], *, size: int) -> StartPlan:
    """Pick the replicas that hold the most recent consistent state; the others go ERR (and get rebuilt later).

    Every write bumps a replica's revision counter, so the highest revision is the newest data. Replicas at that
    revision must also agree on the snapshot chain; when they disagree the larger group wins (ties: the group of
    the first replica listed). A replica with the wrong size means the command line is wrong: refuse to start.

    Within the winning group only one copy can be trusted blindly if unclean replicas are in it (see
    ReplicaState.unclean): the clean ones when there are any, else the first unclean one. The others go ERR and
    are rebuilt from it, so the engine never serves replicas that disagree.
    """
    modes: dict[str, Mode] = {}
    reasons: dict[str, str] = {}
    healthy: dict[str, ReplicaState] = {}
    for name, state in states.items():
        if isinstance(state, errors.MetalhornError):
            modes[name], reasons[name] = Mode.ERR, f"unreachable: {describe(state)}"
        elif state.rebuilding:
            modes[name], reasons[name] = Mode.ERR, "a rebuild of this replica never finished"
        else:
            healthy[name] = state
    wrong = {name: state.size for name, state in healthy.items() if state.size != size}
    if wrong:
        detail = ", ".join(f"{name} has {value}" for name, value in wrong.items())
        return StartPlan(
            modes=modes,
            reasons=reasons,
            error=errors.InvalidArgument(
                f"replica size does not match --size {size}: {detail}; start the engine with the volume's size"
            ),
        )
    if not healthy:
        detail = "; ".join(f"{name}: {reasons[name]}" for name in states) or "no replica given"
        return StartPlan(
            modes=modes,
            reasons=reasons,
            error=errors.Unavailable(f"no usable replica, refusing to start ({detail})"),
        )
    best = max(state.revision for state in healthy.values())
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, state in healthy.items():
        if state.revision == best:
            groups.setdefault(state.chain, []).append(name)
    chain = max(groups, key=lambda key: len(groups[key]))  # max keeps the first of equal groups
    winners = groups[chain]
    clean = [name for name in winners if not healthy[name].unclean]
    trusted = set(clean) if clean else {winners[0]}
    for name, state in healthy.items():
        if state.revision < best:
            modes[name], reasons[name] = Mode.ERR, f"stale: revision {state.revision} < {best}"
        elif state.chain != chain:
            modes[name], reasons[name] = Mode.ERR, f"chain {list(state.chain)} differs from {list(chain)}"
        elif name not in trusted:
            modes[name], reasons[name] = Mode.ERR, "unclean: its process died mid-write; rebuilt from a trusted copy"
        else:
            modes[name], reasons[name] = Mode.RW, ""
    ordered = {name: modes[name] for name in states}
    return StartPlan(modes=ordered, reasons={name: reasons[name] for name in states}, error=None)
