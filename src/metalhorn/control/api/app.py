"""create_app(context): the manager's FastAPI application.

OpenAPI at /openapi.json with a docs page at /docs; /healthz answers without auth; everything under /v1 and
/metrics needs the bearer token. Errors of every kind leave as problem+json (problems.py); bodies over 1 MiB are
refused with 413 before any parsing (limits.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from metalhorn import __version__
from metalhorn.control.api import agents, auth, lb, limits, nodes, problems, volumes
from metalhorn.control.api import context as context_mod

_ERRORS: dict[int | str, dict[str, Any]] = {status: problems.SCHEMA for status in (400, 401, 404, 409, 413, 422)}


def create_app(context: context_mod.Context) -> FastAPI:
    app = FastAPI(
        title="metalhorn manager",
        version=__version__,
        description="Replicated block volumes for bare metal: the manager's REST API. Writes record intent and "
        "answer 202 with the record; controllers converge it and report progress in `status`.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.context = context
    problems.install(app)
    secured = [Depends(auth.require_token)]
    for router in (volumes.router, nodes.router, agents.router, lb.router):
        app.include_router(router, dependencies=secured, responses=_ERRORS)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get(
        "/metrics",
        tags=["meta"],
        dependencies=secured,
        response_class=PlainTextResponse,
        responses={401: problems.SCHEMA},
    )
    async def metrics(request: Request) -> PlainTextResponse:
        ctx: context_mod.Context = request.app.state.context
        return PlainTextResponse(ctx.metrics(), media_type="text/plain; version=0.0.4")

    app.add_middleware(limits.BodyLimit, limit=limits.MAX_BODY)
    return app
