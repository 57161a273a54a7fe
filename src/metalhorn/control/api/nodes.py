"""Node, disk, replica, engine and settings routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from metalhorn.control.api import models
from metalhorn.control.api.volumes import check_version, ctx, write
from metalhorn.control.controllers import settings as settings_mod

router = APIRouter(prefix="/v1", tags=["nodes"])
NodeName = Annotated[str, Path(pattern=models.NAME_PATTERN, description="node name")]


@router.get("/nodes", response_model=models.RecordList)
async def list_nodes(request: Request) -> dict[str, Any]:
    return {"items": [rec.to_json() for rec in ctx(request).store.list("node")]}


@router.get("/nodes/{name}", response_model=models.RecordOut)
async def get_node(request: Request, name: NodeName) -> dict[str, Any]:
    return ctx(request).store.get("node", name).to_json()


@router.patch("/nodes/{name}", response_model=models.RecordOut)
async def patch_node(request: Request, name: NodeName, body: models.NodePatch) -> dict[str, Any]:
    node = ctx(request).store.get("node", name)
    check_version(node, body.resource_version)
    changes = body.model_dump(exclude_none=True, exclude={"resource_version"})
    if not changes:
        return node.to_json()
    return write(request, node.with_(spec={**node.spec, **changes}))


@router.post("/nodes/{name}/disks", response_model=models.RecordOut)
async def add_disk(request: Request, name: NodeName, body: models.DiskAdd) -> dict[str, Any]:
    node = ctx(request).store.get("node", name)
    disks = dict(node.spec.get("disks") or {})
    disks[body.path] = {
        **(disks.get(body.path) or {"schedulable": True}),
        "tags": list(body.tags),
        "reserved": body.reserved,
    }
    return write(request, node.with_(spec={**node.spec, "disks": disks}))


@router.get("/replicas", response_model=models.RecordList, tags=["internal"])
async def list_replicas(request: Request) -> dict[str, Any]:
    return {"items": [rec.to_json() for rec in ctx(request).store.list("replica")]}


@router.get("/engines", response_model=models.RecordList, tags=["internal"])
async def list_engines(request: Request) -> dict[str, Any]:
    return {"items": [rec.to_json() for rec in ctx(request).store.list("engine")]}


@router.get("/settings", tags=["settings"])
async def get_settings(request: Request) -> dict[str, Any]:
    return settings_mod.as_dict(settings_mod.load(ctx(request).store))


@router.patch("/settings", tags=["settings"])
async def patch_settings(request: Request, body: models.SettingsPatch) -> dict[str, Any]:
    context = ctx(request)
    changes = body.model_dump(exclude_none=True)
    if changes:
        settings_mod.save(context.store, changes)
        context.on_change("setting")
    return settings_mod.as_dict(settings_mod.load(context.store))
