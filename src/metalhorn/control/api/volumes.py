"""Volume routes: record intent in the volume's spec and answer 202 with the record; the volume controller
converges it (replicas, engine, status)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from metalhorn.common import errors
from metalhorn.control.api import context as context_mod
from metalhorn.control.api import models, problems
from metalhorn.control.store import record as record_mod

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])
VolumeName = Annotated[str, Path(pattern=models.NAME_PATTERN, description="volume name")]


def ctx(request: Request) -> context_mod.Context:
    context: context_mod.Context = request.app.state.context
    return context


def check_version(record: record_mod.Record, version: int | None) -> None:
    if version is not None and version != record.resource_version:
        raise errors.Conflict(
            f"{record.kind} {record.name!r} is at version {record.resource_version}, not {version}; "
            "read it again and retry your change"
        )


def write(request: Request, record: record_mod.Record) -> dict[str, Any]:
    context = ctx(request)
    stored = context.store.update(record)
    context.on_change(record.kind)
    return stored.to_json()


def live_volume(request: Request, name: str) -> record_mod.Record:
    volume = ctx(request).store.get("volume", name)
    if volume.spec.get("deleting"):
        raise errors.InvalidArgument(f"volume {name!r} is being deleted; create a new one instead")
    return volume


@router.get("", response_model=models.RecordList)
async def list_volumes(request: Request) -> dict[str, Any]:
    return {"items": [rec.to_json() for rec in ctx(request).store.list("volume")]}


@router.post("", status_code=202, response_model=models.RecordOut)
async def create_volume(request: Request, body: models.VolumeCreate) -> dict[str, Any]:
    context = ctx(request)
    record = record_mod.Record(
        kind="volume",
        name=body.name,
        spec=body.spec(),
        status={"state": "creating", "robustness": "unknown", "reasons": [], "replicas": [], "scheduling": []},
    )
    try:
        stored = context.store.create(record)
    except errors.AlreadyExists:
        raise problems.FieldError(
            "name", errors.AlreadyExists(f"volume {body.name!r} already exists; pick another name or delete it first")
        ) from None
    context.on_change("volume")
    return stored.to_json()


@router.get("/{name}", response_model=models.RecordOut)
async def get_volume(request: Request, name: VolumeName) -> dict[str, Any]:
    return ctx(request).store.get("volume", name).to_json()


@router.delete("/{name}", status_code=202, response_model=models.RecordOut)
async def delete_volume(
    request: Request,
    name: VolumeName,
    resource_version: Annotated[int | None, Query(ge=1, le=models.MAX_INT)] = None,
) -> dict[str, Any]:
    volume = ctx(request).store.get("volume", name)
    check_version(volume, resource_version)
    if volume.spec.get("deleting"):
        return volume.to_json()
    status = {**volume.status, "state": "deleting"}
    return write(request, volume.with_(spec={**volume.spec, "deleting": True}, status=status))


@router.post("/{name}/attach", status_code=202, response_model=models.RecordOut)
async def attach_volume(request: Request, name: VolumeName, body: models.Attach | None = None) -> dict[str, Any]:
    body = body or models.Attach()
    volume = live_volume(request, name)
    check_version(volume, body.resource_version)
    node = body.node or choose_node(request, volume)
    if body.node is not None:
        try:
            ctx(request).store.get("node", body.node)
        except errors.NotFound:
            raise problems.invalid("node", f"no node named {body.node!r}; `metalhorn node ls` lists them") from None
    current = str(volume.spec.get("attach_node", ""))
    if current == node:
        return volume.to_json()
    if current:
        raise problems.FieldError(
            "node",
            errors.Conflict(f"volume {name!r} is attached to node {current}; detach it first, then attach to {node}"),
        )
    return write(request, volume.with_(spec={**volume.spec, "attach_node": node}))


def choose_node(request: Request, volume: record_mod.Record) -> str:
    """A ready node, preferring one that holds a replica of the volume (local reads)."""
    current = str(volume.spec.get("attach_node", ""))
    if current:
        return current
    store = ctx(request).store
    ready = [node.name for node in store.list("node") if node.status.get("ready")]
    local = {str(r.spec.get("node")) for r in store.list("replica") if r.spec.get("volume") == volume.name}
    for name in ready:
        if name in local:
            return name
    if ready:
        return ready[0]
    raise problems.invalid("node", "no node is ready to attach to; start an agent (`metalhorn agent`) first")


@router.post("/{name}/detach", status_code=202, response_model=models.RecordOut)
async def detach_volume(request: Request, name: VolumeName, body: models.Detach | None = None) -> dict[str, Any]:
    body = body or models.Detach()
    volume = live_volume(request, name)
    check_version(volume, body.resource_version)
    if not volume.spec.get("attach_node"):
        return volume.to_json()
    return write(request, volume.with_(spec={**volume.spec, "attach_node": ""}))


@router.post("/{name}/expand", status_code=202, response_model=models.RecordOut)
async def expand_volume(request: Request, name: VolumeName, body: models.Expand) -> dict[str, Any]:
    volume = live_volume(request, name)
    check_version(volume, body.resource_version)
    size = int(body.size)
    current = int(volume.spec.get("size", 0))
    if size == current:
        return volume.to_json()
    if size < current:
        raise problems.invalid("size", f"volumes only grow; {size} is smaller than the current {current} bytes")
    if volume.spec.get("attach_node") or volume.status.get("state") not in ("detached", "faulted"):
        raise problems.invalid("size", f"volume {name!r} must be detached to expand it; detach it first")
    return write(request, volume.with_(spec={**volume.spec, "size": size}))
