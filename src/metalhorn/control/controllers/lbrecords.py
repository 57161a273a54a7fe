"""How load-balancer intent lives in the store, and the pure planning of `apply -f` / `delete -f`.

Records:

- ``lbconfig/global``: ``spec.documents`` is every applied MetalLB document (IPAddressPool, L2Advertisement,
  BGPAdvertisement, Community, BGPPeer, BFDProfile) in the order first applied. One record, so a change is one
  write under one resource version: the whole resulting configuration is validated before it is stored, and an
  invalid one changes nothing.
- ``service/<namespace>/<name>``: ``spec.document`` is the Kubernetes-shaped Service as applied (with its
  standalone ``endpoints``); ``status`` is written by the service controller (controllers/services.py).
- ``announcement/<node>``: ``status`` is what the L2 and BGP agents of that node announce right now,
  ``{l2: ["ns/name", ...], bgp: {"ns/name": ["peer", ...]}}``, replaced whole by each report.

The planners here are pure: current documents + the user's documents in, the new documents and a kubectl-like
result per object out, or :class:`metalhorn.lb.fields.InvalidConfig` naming every bad object and field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from metalhorn.common import errors
from metalhorn.control.store import base
from metalhorn.control.store import record as record_mod
from metalhorn.lb import config, fields, model

CONFIG_KIND = "lbconfig"
CONFIG_NAME = "global"
SERVICE_KIND = "service"
ANNOUNCEMENT_KIND = "announcement"
KINDS = (CONFIG_KIND, SERVICE_KIND, ANNOUNCEMENT_KIND)

Document = dict[str, Any]


def service_record_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclasses.dataclass(frozen=True, order=True)
class ObjectKey:
    """What identifies an applied object: kind, namespace (defaulted as Kubernetes would), name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name}


def object_key(doc: object) -> ObjectKey | None:
    """The key of a document, or None when it has no usable kind/name (the validators then say what is wrong)."""
    if not isinstance(doc, dict):
        return None
    kind, meta = doc.get("kind"), doc.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    default = model.DEFAULT_NAMESPACE if kind == "Service" else config.DEFAULT_NAMESPACE
    namespace = meta.get("namespace")
    return ObjectKey(kind, namespace if isinstance(namespace, str) and namespace else default, meta["name"])


def _classify(documents: Sequence[object], problems: list[fields.Problem]) -> tuple[list[object], list[object]]:
    """Split into MetalLB documents and Services; anything else is a problem naming the document."""
    metallb: list[object] = []
    services: list[object] = []
    for i, doc in enumerate(documents):
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind == "Service":
            services.append(doc)
        elif isinstance(kind, str) and kind in config.KINDS:
            metallb.append(doc)
        else:
            what = config.describe(doc, i)
            if not isinstance(doc, dict):
                problems.append(fields.Problem(what, "", f"must be a mapping, not {fields.type_name(doc)}"))
            else:
                known = ", ".join([*config.KINDS, "Service"])
                problems.append(fields.Problem(what, "kind", f"{kind!r} is not one of {known}"))
    return metallb, services


@dataclasses.dataclass(frozen=True)
class ServiceChange:
    record_name: str
    document: Document
    service: model.Service


@dataclasses.dataclass(frozen=True)
class ApplyPlan:
    documents: tuple[Document, ...]  # the whole resulting MetalLB document list
    config: config.LbConfig
    config_changed: bool
    services: tuple[ServiceChange, ...]  # services to create or update (unchanged ones left out)
    results: tuple[dict[str, str], ...]  # {kind, namespace, name, action: created|configured|unchanged}


def plan_apply(current: Sequence[Document], services: Mapping[str, Document], documents: Sequence[object]) -> ApplyPlan:
    """Merge `documents` into the current configuration and services; raise InvalidConfig listing every problem.

    `services` maps service record names to their stored documents. A MetalLB document replaces the stored one
    with the same kind, namespace and name, or is appended. Nothing is decided until everything validated.
    """
    problems: list[fields.Problem] = []
    metallb, service_docs = _classify(documents, problems)
    merged: list[object] = list(current)
    index = {key: i for i, doc in enumerate(current) if (key := object_key(doc)) is not None}
    results: list[dict[str, str]] = []
    seen: set[ObjectKey] = set()
    for doc in metallb:
        key = object_key(doc)
        if key is None:
            merged.append(doc)  # config.parse names what is missing
            continue
        if key in seen:
            problems.append(fields.Problem(str(key), "metadata.name", "is given twice in this apply"))
            continue
        seen.add(key)
        if key in index:
            action = "unchanged" if merged[index[key]] == doc else "configured"
            merged[index[key]] = doc
        else:
            action = "created"
            index[key] = len(merged)
            merged.append(doc)
        results.append({**key.as_json(), "action": action})
    changes: list[ServiceChange] = []
    for doc in service_docs:
        try:
            service = model.parse_service(doc)
        except fields.InvalidConfig as exc:
            problems.extend(exc.problems)
            continue
        key = ObjectKey("Service", service.namespace, service.name)
        if key in seen:
            problems.append(fields.Problem(str(key), "metadata.name", "is given twice in this apply"))
            continue
        seen.add(key)
        name = service_record_name(service.namespace, service.name)
        assert isinstance(doc, dict)
        stored = services.get(name)
        action = "created" if stored is None else "unchanged" if stored == doc else "configured"
        if action != "unchanged":
            changes.append(ServiceChange(name, doc, service))
        results.append({**key.as_json(), "action": action})
    cfg = config.LbConfig()
    try:
        cfg = config.parse(merged)
    except fields.InvalidConfig as exc:
        problems.extend(exc.problems)
    if problems:
        raise fields.InvalidConfig(problems)
    docs = tuple(d for d in merged if isinstance(d, dict))
    return ApplyPlan(docs, cfg, list(docs) != list(current), tuple(changes), tuple(results))


@dataclasses.dataclass(frozen=True)
class DeletePlan:
    documents: tuple[Document, ...]
    config_changed: bool
    services: tuple[str, ...]  # service record names to delete
    results: tuple[dict[str, str], ...]  # action: deleted | not found


def plan_delete(current: Sequence[Document], services: Sequence[str], documents: Sequence[object]) -> DeletePlan:
    """Remove the named objects; the remaining configuration must still be valid (e.g. no advertisement may
    name a deleted pool), else InvalidConfig and nothing changes. Only kind and metadata are read."""
    problems: list[fields.Problem] = []
    metallb, service_docs = _classify(documents, problems)
    gone: set[ObjectKey] = set()
    results: list[dict[str, str]] = []
    existing = {key for doc in current if (key := object_key(doc)) is not None}
    stored_services = set(services)
    doomed_services: list[str] = []
    for i, doc in enumerate([*metallb, *service_docs]):
        key = object_key(doc)
        if key is None:
            problems.append(fields.Problem(config.describe(doc, i), "metadata.name", "is required"))
            continue
        if key.kind == "Service":
            name = service_record_name(key.namespace, key.name)
            found = name in stored_services
            if found:
                doomed_services.append(name)
        else:
            found = key in existing
            gone.add(key)
        results.append({**key.as_json(), "action": "deleted" if found else "not found"})
    remaining = [doc for doc in current if object_key(doc) not in gone]
    try:
        config.parse(remaining)
    except fields.InvalidConfig as exc:
        problems.extend(exc.problems)
    if problems:
        raise fields.InvalidConfig(problems)
    return DeletePlan(tuple(remaining), len(remaining) != len(current), tuple(doomed_services), tuple(results))


# -- store access ------------------------------------------------------------------------------------------------


def load_config_record(store: base.Store) -> record_mod.Record | None:
    try:
        return store.get(CONFIG_KIND, CONFIG_NAME)
    except errors.NotFound:
        return None


def config_documents(rec: record_mod.Record | None) -> list[Document]:
    if rec is None:
        return []
    docs = rec.spec.get("documents") or []
    return [d for d in docs if isinstance(d, dict)]


def save_config(store: base.Store, rec: record_mod.Record | None, documents: Sequence[Document]) -> record_mod.Record:
    """Write the documents under `rec`'s version (errors.Conflict if someone else wrote in between)."""
    spec = {"documents": list(documents)}
    if rec is None:
        return store.create(record_mod.Record(kind=CONFIG_KIND, name=CONFIG_NAME, spec=spec))
    return store.update(rec.with_(spec=spec))


def service_document(rec: record_mod.Record) -> Document:
    doc = rec.spec.get("document")
    return doc if isinstance(doc, dict) else {}
