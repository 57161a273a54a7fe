"""The one REST client of the manager API: used by the CLI, `metalhorn up` and the agents.

Where to connect and with which token is resolved once (`resolve_target`): flags first, then the environment
(METALHORN_MANAGER, METALHORN_TOKEN_FILE, METALHORN_TOKEN), then the defaults of `metalhorn up` on this
machine. Errors come back as the metalhorn error tree: a problem+json body (RFC 9457) carries the ErrorCode
name in `code`, which picks the exception class; its `detail` (and `field`) become the message, so the CLI can
print what was wrong and what to do. Transport failures become Unavailable with a hint.

`Client` is synchronous (CLI, `up`); `AsyncClient` is the same calls for the agent's event loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import httpx

from metalhorn.common import errors

DEFAULT_MANAGER = "http://127.0.0.1:9500"
DEFAULT_TIMEOUT = 10.0

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """Which manager to talk to, and the bearer token to show it."""

    url: str
    token: str
    token_source: str = ""  # where the token came from, for error messages


def default_up_token_file() -> pathlib.Path:
    """Where `metalhorn up` with its default --data-dir keeps the manager token (see daemons/up.py)."""
    if os.geteuid() == 0:
        base = pathlib.Path("/var/lib/metalhorn")
    else:
        data_home = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
        base = pathlib.Path(data_home) / "metalhorn"
    return base / "manager" / "token"


def read_token(path: str | os.PathLike[str]) -> str:
    try:
        token = pathlib.Path(path).read_text().strip()
    except FileNotFoundError:
        raise errors.NotFound(
            f"token file {path} does not exist; pass the manager's token file (STATE_DIR/token) with --token-file"
        ) from None
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise errors.InvalidArgument(f"token file {path} is empty; pass the manager's token file")
    return token


def resolve_target(
    *, manager: str | None = None, token_file: str | None = None, env: Mapping[str, str] | None = None
) -> Target:
    """Flags, then environment, then the defaults of a local `metalhorn up`."""
    env = os.environ if env is None else env
    url = (manager or env.get("METALHORN_MANAGER") or DEFAULT_MANAGER).rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    if token_file:
        return Target(url=url, token=read_token(token_file), token_source=f"--token-file {token_file}")
    if env.get("METALHORN_TOKEN_FILE"):
        path = env["METALHORN_TOKEN_FILE"]
        return Target(url=url, token=read_token(path), token_source=f"METALHORN_TOKEN_FILE={path}")
    if env.get("METALHORN_TOKEN"):
        return Target(url=url, token=env["METALHORN_TOKEN"], token_source="METALHORN_TOKEN")
    fallback = default_up_token_file()
    if fallback.exists():
        return Target(url=url, token=read_token(fallback), token_source=str(fallback))
    return Target(url=url, token="", token_source="")


def error_from_response(response: httpx.Response, *, target: Target) -> errors.MetalhornError:
    """Turn an error response into the error of its code, with a message that says what to do."""
    body: Any = None
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    problem = body if isinstance(body, dict) else {}
    detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase or "request failed")
    field = problem.get("field")
    if field and str(field) not in detail:
        detail = f"{field}: {detail}"
    if response.status_code == 401:
        where = f" (token from {target.token_source})" if target.token_source else " (no token found)"
        return errors.InvalidArgument(
            f"the manager at {target.url} refused the request: {detail}{where}; pass the manager's token file "
            "with --token-file or set METALHORN_TOKEN_FILE (metalhorn up prints where it is)"
        )
    code_name = problem.get("code")
    if isinstance(code_name, str) and code_name in errors.ErrorCode.__members__:
        return errors.from_code(errors.ErrorCode[code_name], detail)
    by_status: dict[int, type[errors.MetalhornError]] = {
        400: errors.InvalidArgument,
        404: errors.NotFound,
        409: errors.Conflict,
        413: errors.InvalidArgument,
        422: errors.InvalidArgument,
        503: errors.Unavailable,
    }
    cls = by_status.get(response.status_code, errors.Internal)
    return cls(f"{detail} (HTTP {response.status_code} from {target.url})")


def _unreachable(target: Target, exc: httpx.HTTPError) -> errors.Unavailable:
    return errors.Unavailable(
        f"cannot reach the manager at {target.url}: {exc}; start it with `metalhorn up` (or `metalhorn manager`), "
        "or point --manager / METALHORN_MANAGER at it"
    )


def _answer(response: httpx.Response, target: Target) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response, target=target)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise errors.ProtocolError(f"the manager at {target.url} sent a reply that is not JSON") from exc


def _headers(target: Target) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    return headers


def volume_body(*, name: str, size: str | int, replicas: int | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "size": size}
    if replicas is not None:
        body["replicas"] = replicas
    body.update({key: value for key, value in spec.items() if value is not None})
    return body


class Client:
    """Synchronous client. Use as a context manager or call close()."""

    def __init__(
        self, target: Target, *, timeout: float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.target = target
        self._http = httpx.Client(
            base_url=target.url, headers=_headers(target), timeout=timeout, transport=transport, trust_env=False
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise _unreachable(self.target, exc) from exc
        return _answer(response, self.target)

    # -- volumes ----------------------------------------------------------------------------------------------
    def list_volumes(self) -> list[Record]:
        return _items(self.request("GET", "/v1/volumes"))

    def get_volume(self, name: str) -> Record:
        return dict(self.request("GET", f"/v1/volumes/{name}"))

    def create_volume(self, *, name: str, size: str | int, replicas: int | None = None, **spec: Any) -> Record:
        return dict(
            self.request("POST", "/v1/volumes", body=volume_body(name=name, size=size, replicas=replicas, **spec))
        )

    def delete_volume(self, name: str) -> Record | None:
        result = self.request("DELETE", f"/v1/volumes/{name}")
        return dict(result) if isinstance(result, dict) else None

    def attach_volume(self, name: str, *, node: str | None = None) -> Record:
        body = {"node": node} if node else {}
        return dict(self.request("POST", f"/v1/volumes/{name}/attach", body=body))

    def detach_volume(self, name: str) -> Record:
        return dict(self.request("POST", f"/v1/volumes/{name}/detach", body={}))

    def expand_volume(self, name: str, *, size: str | int) -> Record:
        return dict(self.request("POST", f"/v1/volumes/{name}/expand", body={"size": size}))

    # -- nodes ------------------------------------------------------------------------------------------------
    def list_nodes(self) -> list[Record]:
        return _items(self.request("GET", "/v1/nodes"))

    def get_node(self, name: str) -> Record:
        return dict(self.request("GET", f"/v1/nodes/{name}"))

    def add_disk(self, node: str, *, path: str, tags: list[str] | None = None) -> Record:
        body: dict[str, Any] = {"path": path}
        if tags is not None:
            body["tags"] = tags
        return dict(self.request("POST", f"/v1/nodes/{node}/disks", body=body))

    def list_replicas(self) -> list[Record]:
        return _items(self.request("GET", "/v1/replicas"))

    def list_engines(self) -> list[Record]:
        return _items(self.request("GET", "/v1/engines"))

    def update_settings(self, settings: Mapping[str, Any]) -> Record:
        """PATCH /v1/settings (the `setting/global` record): only the given keys change."""
        return dict(self.request("PATCH", "/v1/settings", body=dict(settings)) or {})

    def healthy(self) -> bool:
        """GET /healthz; False when the manager does not answer (no exception: used while waiting for it)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False


class AsyncClient:
    """The calls an agent makes, on its event loop."""

    def __init__(
        self, target: Target, *, timeout: float = DEFAULT_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.target = target
        self._http = httpx.AsyncClient(
            base_url=target.url, headers=_headers(target), timeout=timeout, transport=transport, trust_env=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise _unreachable(self.target, exc) from exc
        return _answer(response, self.target)

    async def sync_agent(self, node: str, report: Mapping[str, Any]) -> Record:
        answer = await self.request("POST", f"/v1/agents/{node}/sync", body=dict(report))
        if not isinstance(answer, dict):
            raise errors.ProtocolError(f"the manager at {self.target.url} answered the agent sync with no object")
        return answer

    async def get_node(self, name: str) -> Record:
        return dict(await self.request("GET", f"/v1/nodes/{name}"))

    async def list_nodes(self) -> list[Record]:
        return _items(await self.request("GET", "/v1/nodes"))

    # -- load balancer (the agent's LB runtime) -----------------------------------------------------------------
    async def get_lb_config(self) -> Record:
        """``{documents, resource_version}``: the applied MetalLB documents."""
        answer = await self.request("GET", "/v1/lb/config")
        return dict(answer) if isinstance(answer, dict) else {"documents": [], "resource_version": 0}

    async def list_lb_services(self) -> list[Record]:
        return _items(await self.request("GET", "/v1/lb/services"))

    async def put_announcements(self, node: str, report: Mapping[str, Any]) -> Record:
        """What ``node`` announces now (replaces its previous report; see docs/loadbalancer.md)."""
        return dict(await self.request("PUT", f"/v1/lb/announcements/{node}", body=dict(report)) or {})


def _items(answer: Any) -> list[Record]:
    """A list endpoint answers a JSON list, or an object with `items` (both accepted)."""
    if isinstance(answer, dict):
        answer = answer.get("items", [])
    if not isinstance(answer, list):
        raise errors.ProtocolError("the manager answered a list request with something that is not a list")
    return [dict(item) for item in answer if isinstance(item, dict)]
