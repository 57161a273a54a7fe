"""Load-balancer routes: apply and delete MetalLB documents and Services, read pools and service statuses, and
take the per-node announcement reports of the L2/BGP agents.

``POST /v1/lb/apply`` validates the WHOLE resulting configuration (stored documents merged with the new ones)
and every Service with the one validator (lb/config.py, lb/model.py) before storing anything, so invalid input
changes nothing; the answer is 422 problem+json whose ``errors`` name each object and field. The service
controller assigns IPs afterwards; statuses say which IP each service got, from which pool, or why it waits.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from metalhorn.common import errors
from metalhorn.control.api import models, problems
from metalhorn.control.api.volumes import ctx
from metalhorn.control.controllers import lbrecords
from metalhorn.control.controllers import settings as settings_mod
from metalhorn.control.store import record as record_mod
from metalhorn.lb import allocator, config, fields

router = APIRouter(prefix="/v1/lb", tags=["load balancer"])

MAX_DOCUMENTS = 100_000
Namespace = Annotated[str, Path(pattern=models.NAME_PATTERN, description="the service's namespace")]
ServiceName = Annotated[str, Path(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", description="service name")]
NodeName = Annotated[str, Path(pattern=models.NAME_PATTERN, description="the reporting node")]
Text = Annotated[str, Field(max_length=512)]


class Documents(BaseModel):
    """Parsed YAML documents: MetalLB kinds and Kubernetes-shaped Services (multi-document files welcome)."""

    model_config = ConfigDict(extra="forbid")
    documents: Annotated[list[Any], Field(max_length=MAX_DOCUMENTS)]
    dry_run: bool = False


class BgpSession(BaseModel):
    """One BGP session of the reporting node, as its speaker sees it (``metalhorn lb peers``)."""

    model_config = ConfigDict(extra="forbid")
    peer: Text
    address: Text = ""
    state: Text = ""
    prefixes_advertised: Annotated[int, Field(ge=0)] = 0
    established_at: float | None = None
    last_error: Text = ""
    flaps: Annotated[int, Field(ge=0)] = 0


class Announcements(BaseModel):
    """What one node announces now, replacing its previous report. Keys are service names "namespace/name"."""

    model_config = ConfigDict(extra="forbid")
    l2: Annotated[list[Text], Field(max_length=MAX_DOCUMENTS)] = []
    bgp: Annotated[dict[Text, Annotated[list[Text], Field(max_length=1024)]], Field(max_length=MAX_DOCUMENTS)] = {}
    bgp_sessions: Annotated[list[BgpSession], Field(max_length=1024)] = []


def invalid_config(exc: fields.InvalidConfig) -> JSONResponse:
    found = [{"object": p.obj, "field": p.path, "message": p.message} for p in exc.problems]
    first = exc.problems[0] if exc.problems else None
    return problems.response(
        status=422,
        code="INVALID",
        detail=exc.message,
        field=(first.path or "documents") if first else "documents",
        extra={"errors": found},
    )


def _service_docs(request: Request, documents: list[Any]) -> dict[str, lbrecords.Document]:
    """The stored documents of the Services named in the request (one read each, not a list of every service)."""
    store = ctx(request).store
    out: dict[str, lbrecords.Document] = {}
    for doc in documents:
        key = lbrecords.object_key(doc)
        if key is None or key.kind != "Service":
            continue
        name = lbrecords.service_record_name(key.namespace, key.name)
        with contextlib.suppress(errors.NotFound):
            out[name] = lbrecords.service_document(store.get(lbrecords.SERVICE_KIND, name))
    return out


@router.post("/apply", response_model=None)
async def apply(request: Request, body: Documents) -> dict[str, Any] | JSONResponse:
    context = ctx(request)
    store = context.store
    cfg_record = lbrecords.load_config_record(store)
    try:
        plan = lbrecords.plan_apply(
            lbrecords.config_documents(cfg_record), _service_docs(request, body.documents), body.documents
        )
    except fields.InvalidConfig as exc:
        return invalid_config(exc)
    if body.dry_run:
        return {"results": list(plan.results), "dry_run": True}
    if plan.config_changed:
        lbrecords.save_config(store, cfg_record, plan.documents)
    for change in plan.services:
        spec = {"document": change.document}
        try:
            current = store.get(lbrecords.SERVICE_KIND, change.record_name)
        except errors.NotFound:
            store.create(record_mod.Record(kind=lbrecords.SERVICE_KIND, name=change.record_name, spec=spec))
        else:
            store.update(current.with_(spec=spec))
    if plan.config_changed:
        context.on_change(lbrecords.CONFIG_KIND)
    if plan.services:
        context.on_change(lbrecords.SERVICE_KIND)
    return {"results": list(plan.results), "dry_run": False}


@router.post("/delete", response_model=None)
async def delete(request: Request, body: Documents) -> dict[str, Any] | JSONResponse:
    context = ctx(request)
    store = context.store
    cfg_record = lbrecords.load_config_record(store)
    names = [rec.name for rec in store.list(lbrecords.SERVICE_KIND)]
    try:
        plan = lbrecords.plan_delete(lbrecords.config_documents(cfg_record), names, body.documents)
    except fields.InvalidConfig as exc:
        return invalid_config(exc)
    if body.dry_run:
        return {"results": list(plan.results), "dry_run": True}
    if plan.config_changed:
        lbrecords.save_config(store, cfg_record, plan.documents)
        context.on_change(lbrecords.CONFIG_KIND)
    for name in plan.services:
        store.delete(lbrecords.SERVICE_KIND, name)
    if plan.services:
        context.on_change(lbrecords.SERVICE_KIND)
    return {"results": list(plan.results), "dry_run": False}


@router.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    rec = lbrecords.load_config_record(ctx(request).store)
    return {"documents": lbrecords.config_documents(rec), "resource_version": rec.resource_version if rec else 0}


@router.get("/pools")
async def list_pools(request: Request) -> dict[str, Any]:
    """Per pool: its addresses and how many distinct IPs services hold, of how many usable, by family."""
    store = ctx(request).store
    try:
        cfg = config.parse(lbrecords.config_documents(lbrecords.load_config_record(store)))
    except fields.InvalidConfig as exc:
        raise errors.Internal(f"the stored LB configuration does not validate: {exc.message}") from exc
    alloc = allocator.Allocator()
    alloc.set_pools(cfg)
    totals = alloc.counts()
    held: dict[str, set[str]] = {p.name: set() for p in cfg.pools}
    for rec in store.list(lbrecords.SERVICE_KIND):
        pool = rec.status.get("pool")
        if rec.status.get("state") == "assigned" and pool in held:
            held[pool].update(str(ip) for ip in rec.status.get("ingress") or [])
    items = []
    for p in cfg.pools:
        v6 = sum(1 for ip in held[p.name] if ":" in ip)
        v4 = len(held[p.name]) - v6
        total = totals[p.name]
        items.append(
            {
                "name": p.name,
                "namespace": p.meta.namespace,
                "addresses": [r.text for r in p.addresses],
                "auto_assign": p.auto_assign,
                "avoid_buggy_ips": p.avoid_buggy_ips,
                "assigned": v4 + v6,
                "total": total.total,
                "assigned_v4": v4,
                "total_v4": total.total_v4,
                "assigned_v6": v6,
                "total_v6": total.total_v6,
            }
        )
    return {"items": items}


def _announcers(request: Request) -> dict[str, list[dict[str, Any]]]:
    """service name -> [{node, mode, peers}] from reports fresher than node_down_after (a dead agent's report
    is stale, not true)."""
    context = ctx(request)
    horizon = context.clock.wall() - settings_mod.load(context.store).node_down_after
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in context.store.list(lbrecords.ANNOUNCEMENT_KIND):
        if rec.updated_at < horizon:
            continue
        for name in rec.status.get("l2") or []:
            out.setdefault(str(name), []).append({"node": rec.name, "mode": "l2", "peers": []})
        for name, peers in (rec.status.get("bgp") or {}).items():
            out.setdefault(str(name), []).append({"node": rec.name, "mode": "bgp", "peers": list(peers)})
    return out


def _with_announcers(rec: record_mod.Record, announcers: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out = rec.to_json()
    out["status"]["announced_by"] = announcers.get(rec.name, [])
    return out


@router.get("/services", response_model=models.RecordList)
async def list_services(request: Request) -> dict[str, Any]:
    announcers = _announcers(request)
    return {"items": [_with_announcers(rec, announcers) for rec in ctx(request).store.list(lbrecords.SERVICE_KIND)]}


@router.get("/services/{namespace}/{name}", response_model=models.RecordOut)
async def get_service(request: Request, namespace: Namespace, name: ServiceName) -> dict[str, Any]:
    record_name = lbrecords.service_record_name(namespace, name)
    try:
        rec = ctx(request).store.get(lbrecords.SERVICE_KIND, record_name)
    except errors.NotFound:
        raise errors.NotFound(f"service {record_name} does not exist; `metalhorn lb services` lists them") from None
    return _with_announcers(rec, _announcers(request))


@router.delete("/services/{namespace}/{name}", response_model=models.RecordOut)
async def delete_service(request: Request, namespace: Namespace, name: ServiceName) -> dict[str, Any]:
    context = ctx(request)
    record_name = lbrecords.service_record_name(namespace, name)
    try:
        rec = context.store.get(lbrecords.SERVICE_KIND, record_name)
    except errors.NotFound:
        raise errors.NotFound(f"service {record_name} does not exist; `metalhorn lb services` lists them") from None
    context.store.delete(lbrecords.SERVICE_KIND, record_name, resource_version=rec.resource_version)
    context.on_change(lbrecords.SERVICE_KIND)
    return rec.to_json()


@router.put("/announcements/{node}", response_model=models.RecordOut)
async def report_announcements(request: Request, node: NodeName, body: Announcements) -> dict[str, Any]:
    """An L2/BGP agent's report of what its node announces now (send at least every node_down_after seconds)."""
    store = ctx(request).store
    status: dict[str, Any] = {
        "l2": sorted(set(body.l2)),
        "bgp": {k: sorted(set(v)) for k, v in sorted(body.bgp.items())},
        "bgp_sessions": [s.model_dump() for s in sorted(body.bgp_sessions, key=lambda s: s.peer)],
    }
    try:
        rec = store.get(lbrecords.ANNOUNCEMENT_KIND, node)
    except errors.NotFound:
        stored = store.create(record_mod.Record(kind=lbrecords.ANNOUNCEMENT_KIND, name=node, status=status))
    else:
        stored = store.update(rec.with_(status=status))
    ctx(request).on_change(lbrecords.ANNOUNCEMENT_KIND)
    return stored.to_json()


@router.get("/announcements", response_model=models.RecordList)
async def list_announcements(request: Request) -> dict[str, Any]:
    return {"items": [rec.to_json() for rec in ctx(request).store.list(lbrecords.ANNOUNCEMENT_KIND)]}


@router.get("/peers")
async def list_peers(request: Request) -> dict[str, Any]:
    """Every node's BGP sessions from its last report: {items: [{node, peer, address, state,
    prefixes_advertised, established_at, last_error, flaps, stale}]}; a report older than node_down_after is
    stale (its agent is gone or cut off) and its state is not to be believed."""
    context = ctx(request)
    horizon = context.clock.wall() - settings_mod.load(context.store).node_down_after
    items = []
    for rec in context.store.list(lbrecords.ANNOUNCEMENT_KIND):
        for session in rec.status.get("bgp_sessions") or []:
            if isinstance(session, dict):
                items.append({"node": rec.name, **session, "stale": rec.updated_at < horizon})
    items.sort(key=lambda item: (str(item.get("node")), str(item.get("peer"))))
    return {"items": items}
