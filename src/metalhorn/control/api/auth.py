"""Bearer-token auth: one token per manager, generated at first start into STATE_DIR/token with mode 0600.

Every /v1 route and /metrics need `Authorization: Bearer <token>` (agents included); /healthz, /openapi.json
and /docs do not. Comparison is constant-time.
"""

from __future__ import annotations

import logging
import os
import pathlib
import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from metalhorn.common import errors, logs

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="the token from the manager's STATE_DIR/token")


def load_or_create(path: pathlib.Path) -> str:
    """The token stored at `path`; created (0600, never world-readable even for a moment) if missing."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise errors.from_oserror(exc, f"token file {path}") from exc
    if token:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("token file is readable by others; fixing %s", logs.kv(path=path, mode=oct(mode)))
            path.chmod(0o600)
        return token
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise errors.from_oserror(exc, f"token file {path}") from exc
    log.info("token generated %s", logs.kv(path=path))
    return token


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected: str = request.app.state.context.token
    given = credentials.credentials if credentials is not None else ""
    if not given or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token; send `Authorization: Bearer <token>` with the token from the "
            "manager's state directory (file `token`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
