"""The agent sync route: heartbeat + status report in, the node's desired records out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from metalhorn.control.api import models
from metalhorn.control.api.volumes import ctx
from metalhorn.control.controllers import agentsync

router = APIRouter(prefix="/v1/agents", tags=["agents"])


@router.post("/{node}/sync")
async def sync_agent(
    request: Request,
    node: Annotated[str, Path(pattern=models.NAME_PATTERN, description="the agent's node name")],
    body: models.AgentReport,
) -> dict[str, Any]:
    context = ctx(request)
    outcome = agentsync.sync(context.store, node=node, report=body.model_dump(), clock=context.clock)
    if outcome.changed:
        context.on_change("agent")
    return outcome.answer
