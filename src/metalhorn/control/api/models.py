"""Request bodies, validated once at the edge (pydantic); a bad field becomes a 422 naming that field.

Names follow DNS labels (`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`), so they are safe as file names, export names
and URL path segments: no "../", no spaces. Sizes are bytes or strings like "10G" (common/units.py), positive,
a multiple of 4 KiB, at most 1 PiB.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from metalhorn.common import errors, units

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
TAG_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
MAX_SIZE = 1 << 50
BLOCK = 4096
MAX_INT = (1 << 63) - 1

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-', 1-63")]
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
Tags = Annotated[list[Tag], Field(max_length=64)]


def _size_input(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError('size must be a number of bytes or a string like "10G"')
    return parse_size(value)


Size = Annotated[
    int,
    BeforeValidator(_size_input),
    WithJsonSchema(
        {
            "oneOf": [{"type": "integer", "minimum": BLOCK}, {"type": "string", "pattern": r"^\s*\d+\s*[a-zA-Z]*\s*$"}],
            "description": 'bytes, or a size like "10G", "512MiB" (K/M/G/T are binary)',
        }
    ),
]
Version = Annotated[int, Field(ge=1, le=MAX_INT, description="fail with 409 unless the record has this version")]


def parse_size(value: int | str) -> int:
    """The one size rule for the API; raises ValueError (pydantic turns it into a 422 naming the field)."""
    if isinstance(value, str) and len(value) > 64:
        raise ValueError("size is too long; write e.g. 10G")
    try:
        size = units.parse_size(value)
    except errors.InvalidArgument as exc:
        raise ValueError(exc.message) from None
    if size > MAX_SIZE:
        raise ValueError(f"size {value!r} is larger than the 1 PiB limit")
    if size % BLOCK:
        raise ValueError(f"size {value!r} is not a multiple of 4 KiB; round it up to {(size // BLOCK + 1) * BLOCK}")
    return size


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumeCreate(_Body):
    name: Name
    size: Size
    replicas: Annotated[int, Field(ge=1, le=16)] = 3
    node_selector: Tags = []
    disk_selector: Tags = []
    data_locality: Literal["disabled", "best-effort", "strict-local"] = "disabled"
    replica_anti_affinity: Literal["hard", "soft"] = "hard"
    zone_anti_affinity: Literal["hard", "soft"] = "soft"
    frontend: Literal["nbd"] = "nbd"

    def spec(self) -> dict[str, Any]:
        spec = self.model_dump(exclude={"name"})
        spec["attach_node"] = ""
        return spec


class Attach(_Body):
    node: Name | None = None
    resource_version: Version | None = None


class Detach(_Body):
    resource_version: Version | None = None


class Expand(_Body):
    size: Size
    resource_version: Version | None = None


class NodePatch(_Body):
    tags: Tags | None = None
    zone: Annotated[str, Field(pattern=r"^$|" + TAG_PATTERN)] | None = None
    schedulable: bool | None = None
    resource_version: Version | None = None


class DiskAdd(_Body):
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    tags: Tags = []
    reserved: Annotated[int, Field(ge=0, le=MAX_INT)] = 0

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value or any(part == ".." for part in value.split("/")):
            raise ValueError("path must be an absolute directory path without '..'")
        return value.rstrip("/") or "/"


class SettingsPatch(_Body):
    replica_replenishment_wait: Annotated[float, Field(ge=0, le=86400 * 30)] | None = None
    over_provisioning_percentage: Annotated[int, Field(ge=1, le=10000)] | None = None
    minimal_available_percentage: Annotated[int, Field(ge=0, le=99)] | None = None
    node_down_after: Annotated[float, Field(ge=1, le=86400)] | None = None


# -- agent sync ---------------------------------------------------------------------------------------------------
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
Text = Annotated[str, Field(max_length=4096)]


class DiskReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    capacity: Count = 0
    available: Count = 0
    tags: Tags = []


class InstanceReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: Literal["pending", "running", "stopped", "failed"] = "pending"
    address: Text | None = None
    pid: Annotated[int, Field(ge=0, le=1 << 31)] | None = None
    error: Text | None = ""


class ReplicaInEngine(BaseModel):
    model_config = ConfigDict(extra="allow")
    address: Text
    mode: Text = ""
    reason: Text | None = ""


class EngineReport(InstanceReport):
    endpoint: Text = ""
    block_device: Text = ""
    replicas: Annotated[list[ReplicaInEngine], Field(max_length=64)] = []
    rebuild: dict[str, Any] | None = None


class AgentReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    address: Text = ""
    agent_url: Text = ""
    zone: Annotated[str, Field(pattern=r"^$|" + TAG_PATTERN)] = ""
    tags: Tags = []
    disks: dict[Text, DiskReport] = {}
    replicas: dict[Text, InstanceReport] = {}
    engines: dict[Text, EngineReport] = {}


class RecordOut(BaseModel):
    """A stored record as the API returns it."""

    kind: str
    name: str
    spec: dict[str, Any]
    status: dict[str, Any]
    owner_id: str
    resource_version: int
    created_at: float
    updated_at: float


class RecordList(BaseModel):
    items: list[RecordOut]
