"""The service controller: LoadBalancer IPs for every stored Service, through the one pure Allocator.

Allocation is global state (who holds which IP decides what the next service gets), so the controller works on
one key, ``lb``, and one in-memory :class:`metalhorn.lb.allocator.Allocator` that it alone owns. The durable
record is each service's ``status``: at start the allocator is rebuilt from the stored statuses
(``set_pools`` + ``restore``) before anything is assigned, so a manager restart never changes an IP. A stored
configuration that no longer parses stops the controller (Fatal) rather than being treated as "no pools", which
would strip every service of its IP.

On a configuration change ``set_pools`` reports services whose IPs left every pool; they are assigned again
(before pending ones) and their status gets an event such as
``moved from 198.18.0.5 to 198.18.1.1: 198.18.0.5 left pool blue``. Services that keep their IPs keep them.
Services are looked at in a fixed order: those holding IPs first, then those requesting specific IPs (so a
dynamic allocation in the same pass cannot take a requested address), then the rest; oldest first within each
group, so an earlier ``apply`` wins a contested IP.

Service status (written here; other keys in it are preserved):
``{state: "assigned"|"pending", ingress: [ip], pool, reason, code, events: [{time, message}]}``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from metalhorn.common import clock as clock_mod
from metalhorn.common import errors, logs
from metalhorn.control import reconcile
from metalhorn.control.controllers import lbrecords
from metalhorn.control.store import base
from metalhorn.control.store import record as record_mod
from metalhorn.lb import allocator, config, fields, model

log = logging.getLogger(__name__)

KEY = "lb"
WAKE_KINDS = (lbrecords.CONFIG_KIND, lbrecords.SERVICE_KIND)  # writes of these kinds wake the controller
MAX_EVENTS = 10
INVALID_CODE = "invalid"  # status.code of a stored document that no longer parses


@dataclasses.dataclass(frozen=True)
class _Lost:
    """A service whose IPs a configuration change (or a failed restore) took away; kept until it is re-assigned."""

    pool: str
    ips: tuple[str, ...]
    reason: str


def _ips(ips: Iterable[allocator.IPAddress]) -> list[str]:
    return [str(ip) for ip in ips]


class ServiceController:
    def __init__(self, *, store: base.Store, clock: clock_mod.Clock) -> None:
        self._store = store
        self._clock = clock
        self.allocator = allocator.Allocator()
        self._started = False
        self._config_version = -1  # resource_version of lbconfig/global last given to set_pools (0: none)
        self._parsed: dict[str, tuple[lbrecords.Document, model.Service | fields.InvalidConfig]] = {}
        self._seen: dict[str, int] = {}  # record name -> resource_version after our last write or look
        self._lost: dict[str, _Lost] = {}
        self._notes: dict[str, list[str]] = {}  # events waiting to be written into a status

    def names(self) -> list[str]:
        return [KEY]

    # -- the one reconcile ------------------------------------------------------------------------------------

    def reconcile(self, key: str) -> reconcile.Result:
        del key
        cfg_record = lbrecords.load_config_record(self._store)
        version = cfg_record.resource_version if cfg_record else 0
        config_changed = version != self._config_version
        if config_changed:
            try:
                cfg = config.parse(lbrecords.config_documents(cfg_record))
            except fields.InvalidConfig as exc:
                return reconcile.Fatal(f"the stored LB configuration does not validate, nothing assigned: {exc}")
        records = {rec.name: rec for rec in self._store.list(lbrecords.SERVICE_KIND)}
        if config_changed:
            self._set_pools(cfg)
            self._config_version = version
        if not self._started:
            self._restore(records)
            self._started = True
        for name in [n for n in {*self._seen, *self._parsed} if n not in records]:
            self._forget(name)
        retry = False
        for rec in self._order(records):
            try:
                self._converge(rec, force=config_changed)
            except errors.Conflict:
                retry = True  # the API wrote it meanwhile; the next pass sees the new spec
            except errors.NotFound:
                self._forget(rec.name)
        return reconcile.Retry(delay=0.05, reason="status write conflicted") if retry else reconcile.Success()

    # -- steps ------------------------------------------------------------------------------------------------

    def _set_pools(self, cfg: config.LbConfig) -> None:
        for event in self.allocator.set_pools(cfg):
            if isinstance(event, allocator.Released):
                self._lost[event.service] = _Lost(event.pool, tuple(_ips(event.ips)), event.reason)
                log.info("service released %s", logs.kv(service=event.service, pool=event.pool, reason=event.reason))
            else:
                ips = ", ".join(_ips(event.ips))
                self._note(event.service, f"pool changed from {event.old_pool} to {event.new_pool}; {ips} kept")

    def _restore(self, records: Mapping[str, record_mod.Record]) -> None:
        """Re-take every stored IP before anything new is assigned (manager start)."""
        restored = 0
        for name, rec in sorted(records.items()):
            stored = [str(ip) for ip in rec.status.get("ingress") or []]
            service = self._service(rec)
            if not stored or not isinstance(service, model.Service):
                continue
            try:
                ips = [ipaddress.ip_address(ip) for ip in stored]
            except ValueError:
                continue
            result = self.allocator.restore(service, ips)
            if isinstance(result, allocator.Pending):
                self._lost[name] = _Lost(str(rec.status.get("pool") or ""), tuple(stored), result.reason)
                log.warning("stored IPs not restored %s", logs.kv(service=name, ips=stored, reason=result.reason))
            else:
                restored += 1
        log.info("allocator restored %s", logs.kv(services=restored, stored=len(records)))

    def _order(self, records: Mapping[str, record_mod.Record]) -> list[record_mod.Record]:
        holding = [rec for name, rec in sorted(records.items()) if self.allocator.assignment(name) is not None]
        waiting = sorted(
            (rec for name, rec in records.items() if self.allocator.assignment(name) is None),
            key=lambda rec: (not self._requests_ips(rec), rec.created_at, rec.name),
        )
        return holding + waiting

    def _converge(self, rec: record_mod.Record, *, force: bool) -> None:
        name = rec.name
        service = self._service(rec)
        unchanged = self._seen.get(name) == rec.resource_version
        holds = self.allocator.assignment(name) is not None
        if unchanged and holds and not force and name not in self._notes:
            return
        if isinstance(service, fields.InvalidConfig):  # stored before a validator change; keep nothing for it
            self.allocator.release(name)
            status = self._status(rec, None, reason=str(service), code=INVALID_CODE)
        else:
            result = self.allocator.assign(service)
            if isinstance(result, allocator.Assignment):
                status = self._status(rec, result, reason="", code="")
            else:
                status = self._status(rec, None, reason=result.reason, code=result.code.value)
        if status != rec.status:
            rec = self._store.update(rec.with_(status=status))
            if status.get("state") == "assigned":
                self._lost.pop(name, None)
        self._notes.pop(name, None)
        self._seen[name] = rec.resource_version

    def _status(
        self, rec: record_mod.Record, result: allocator.Assignment | None, *, reason: str, code: str
    ) -> dict[str, Any]:
        old = rec.status
        old_ips = [str(ip) for ip in old.get("ingress") or []]
        lost = self._lost.get(rec.name)
        messages = list(self._notes.get(rec.name, []))
        previous = old_ips or (list(lost.ips) if lost else [])
        if result is not None:
            ips = _ips(result.ips)
            if previous and previous != ips:
                why = lost.reason if lost else "the service changed"
                messages.append(f"moved from {', '.join(previous)} to {', '.join(ips)}: {why}")
            elif not old_ips:
                messages.append(f"assigned {', '.join(ips)} from pool {result.pool}")
            status = {**old, "state": "assigned", "ingress": ips, "pool": result.pool, "reason": "", "code": ""}
        else:
            if previous and old.get("state") != "pending":
                why = f"{lost.reason}; " if lost else ""
                messages.append(f"lost {', '.join(previous)}: {why}pending: {reason}")
            elif old.get("reason") != reason:
                messages.append(f"pending: {reason}")
            status = {**old, "state": "pending", "ingress": [], "pool": "", "reason": reason, "code": code}
        events = list(old.get("events") or [])
        now = round(self._clock.wall(), 3)
        events.extend({"time": now, "message": m} for m in messages)
        status["events"] = events[-MAX_EVENTS:]
        return status

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def _service(self, rec: record_mod.Record) -> model.Service | fields.InvalidConfig:
        doc = lbrecords.service_document(rec)
        cached = self._parsed.get(rec.name)
        if cached is not None and cached[0] == doc:
            return cached[1]
        parsed: model.Service | fields.InvalidConfig
        try:
            parsed = model.parse_service(doc)
        except fields.InvalidConfig as exc:
            parsed = exc
        self._parsed[rec.name] = (doc, parsed)
        return parsed

    def _requests_ips(self, rec: record_mod.Record) -> bool:
        service = self._service(rec)
        return isinstance(service, model.Service) and bool(service.requested_ips)

    def _note(self, name: str, message: str) -> None:
        self._notes.setdefault(name, []).append(message)

    def _forget(self, name: str) -> None:
        if self.allocator.release(name):
            log.info("service deleted, IPs released %s", logs.kv(service=name))
        for table in (self._parsed, self._seen, self._lost, self._notes):
            table.pop(name, None)
