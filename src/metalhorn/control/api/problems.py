"""Errors -> HTTP, once: RFC 9457 problem details (`application/problem+json`) with the error's `code` (an
ErrorCode name; clients rebuild the exception from it) and, for bad input, the `field` that was wrong."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from metalhorn.common import errors, logs

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

STATUS: dict[errors.ErrorCode, int] = {
    errors.ErrorCode.INVALID: 400,
    errors.ErrorCode.OUT_OF_RANGE: 400,
    errors.ErrorCode.NOT_FOUND: 404,
    errors.ErrorCode.ALREADY_EXISTS: 409,
    errors.ErrorCode.CONFLICT: 409,
    errors.ErrorCode.NOT_SUPPORTED: 501,
    errors.ErrorCode.PROTOCOL: 400,
    errors.ErrorCode.CORRUPT: 500,
    errors.ErrorCode.IO: 500,
    errors.ErrorCode.NO_SPACE: 507,
    errors.ErrorCode.UNAVAILABLE: 503,
    errors.ErrorCode.INTERNAL: 500,
}
_HTTP_CODES = {401: "INVALID", 404: "NOT_FOUND", 405: "INVALID", 413: "INVALID", 415: "INVALID"}

# The schema of every error answer, for the OpenAPI document.
SCHEMA: dict[str, Any] = {
    "description": "RFC 9457 problem details",
    "content": {
        MEDIA_TYPE: {
            "schema": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "code": {"type": "string"},
                    "field": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
            }
        }
    },
}


class FieldError(Exception):
    """A MetalhornError about one input field, raised by routes so the answer names the field."""

    def __init__(self, field: str, error: errors.MetalhornError) -> None:
        super().__init__(error.message)
        self.field = field
        self.error = error


def invalid(field: str, message: str) -> FieldError:
    return FieldError(field, errors.InvalidArgument(f"{field}: {message}"))


def response(
    *,
    status: int,
    code: str,
    detail: str,
    field: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://metalhorn.dev/problems/{code.lower().replace('_', '-')}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field:
        body["field"] = field
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def for_error(exc: errors.MetalhornError, *, field: str | None = None) -> JSONResponse:
    return response(status=STATUS.get(exc.code, 500), code=exc.code.name, detail=exc.message, field=field)


def field_name(loc: Sequence[Any]) -> str:
    """`("body", "spec", "size")` -> "spec.size"; the location kind (body/path/query) is dropped."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "path", "query", "header", "cookie"):
        parts = parts[1:] or parts[:1]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    async def on_metalhorn(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.MetalhornError)
        if STATUS.get(exc.code, 500) >= 500:
            log.warning("request failed %s", logs.kv(path=request.url.path, code=exc.code.name, error=exc.message))
        return for_error(exc)

    async def on_field(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return for_error(exc.error, field=exc.field)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        found = [
            {"field": field_name(item.get("loc", ())), "message": str(item.get("msg", "invalid"))}
            for item in exc.errors()
        ]
        first = found[0] if found else {"field": "body", "message": "invalid request"}
        detail = "; ".join(f"{item['field']}: {item['message']}" for item in found) or first["message"]
        return response(status=422, code="INVALID", detail=detail, field=first["field"], extra={"errors": found})

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "INVALID" if exc.status_code < 500 else "INTERNAL")
        return response(
            status=exc.status_code,
            code=code,
            detail=str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error %s", logs.kv(path=request.url.path, error=repr(exc)), exc_info=exc)
        return response(status=500, code="INTERNAL", detail="internal error in the manager; its log has the details")

    app.add_exception_handler(errors.MetalhornError, on_metalhorn)
    app.add_exception_handler(FieldError, on_field)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
