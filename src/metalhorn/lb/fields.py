"""Reading Kubernetes-shaped documents: every problem collected, each naming its object and field path.

Shared by :mod:`metalhorn.lb.config` (MetalLB's kinds) and :mod:`metalhorn.lb.model` (Services), so both reject
input the same way: one :class:`InvalidConfig` listing every problem, e.g.
``IPAddressPool metallb-system/pool1: spec.addresses[1]: 198.18.0.9-198.18.0.1 is reversed``.  Label selectors
live here too, evaluated as Kubernetes does (matchLabels AND matchExpressions; the empty selector matches all).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from metalhorn.common import errors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------------------------------------------------------
# Problems and the one exception


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with one field of one object."""

    obj: str  # "IPAddressPool metallb-system/pool1"
    path: str  # "spec.addresses[1]"
    message: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.path}: {self.message}" if self.path else f"{self.obj}: {self.message}"


class InvalidConfig(errors.InvalidArgument):
    """A configuration or Service document was rejected; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class Reader:
    """Collects problems for one object while its fields are read; shared with :mod:`metalhorn.lb.model`.

    Every getter records a problem and returns a harmless default on bad input, so one pass finds every mistake.
    """

    def __init__(self, sink: list[Problem], obj: str) -> None:
        self.sink = sink
        self.obj = obj

    def bad(self, path: str, message: str) -> None:
        self.sink.append(Problem(self.obj, path, message))

    def fields(
        self, value: object, path: str, allowed: Collection[str], *, required: Collection[str] = ()
    ) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.bad(path, f"must be a mapping, not {type_name(value)}")
            return {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key not in allowed:
                self.bad(join(path, str(key)), "unknown field")
            else:
                out[key] = item
        for key in required:
            if out.get(key) is None:
                self.bad(join(path, key), "is required")
        return out

    def string(self, m: Mapping[str, Any], key: str, path: str, *, default: str = "") -> str:
        value = m.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.bad(join(path, key), f"must be a string, not {type_name(value)}")
            return default
        return value

    def integer(
        self, m: Mapping[str, Any], key: str, path: str, *, lo: int, hi: int, default: int | None = None
    ) -> int | None:
        value = m.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(join(path, key), f"must be an integer, not {type_name(value)}")
            return default
        if not lo <= value <= hi:
            self.bad(join(path, key), f"{value} is out of range {lo}..{hi}")
            return default
        return value

    def boolean(self, m: Mapping[str, Any], key: str, path: str, *, default: bool) -> bool:
        value = m.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(join(path, key), f"must be true or false, not {type_name(value)}")
            return default
        return value

    def items(self, m: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Any]]:
        """The elements of a list field with their paths; a missing field is an empty list."""
        value = m.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(join(path, key), f"must be a list, not {type_name(value)}")
            return []
        return [(f"{join(path, key)}[{i}]", item) for i, item in enumerate(value)]

    def strings(self, m: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        out: list[str] = []
        for p, item in self.items(m, key, path):
            if not isinstance(item, str) or not item:
                self.bad(p, f"must be a non-empty string, not {type_name(item)}")
            elif item in out:
                self.bad(p, f"{item!r} is listed twice")
            else:
                out.append(item)
        return tuple(out)

    def selectors(self, m: Mapping[str, Any], key: str, path: str) -> tuple[LabelSelector, ...]:
        out: list[LabelSelector] = []
        for p, item in self.items(m, key, path):
            sel = parse_selector(self, item, p)
            if sel in out:
                self.bad(p, "selector is listed twice")
            out.append(sel)
        return tuple(out)

    def ip(self, m: Mapping[str, Any], key: str, path: str) -> IPAddress | None:
        text = self.string(m, key, path)
        if not text:
            return None
        try:
            return ipaddress.ip_address(text.strip())
        except ValueError:
            self.bad(join(path, key), f"{text!r} is not an IP address")
            return None


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------------------------------------------------------
# Label selectors, as Kubernetes evaluates them

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.EXISTS:
            return self.key in labels
        if self.operator is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        if self.operator is Operator.IN:
            return self.key in labels and labels[self.key] in self.values
        # NotIn matches objects without the key too (Kubernetes semantics).
        return self.key not in labels or labels[self.key] not in self.values


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """matchLabels AND matchExpressions; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


def any_selector_matches(selectors: Iterable[LabelSelector], labels: Mapping[str, str]) -> bool:
    return any(s.matches(labels) for s in selectors)


def check_label_key(r: Reader, key: object, path: str) -> bool:
    if not isinstance(key, str):
        r.bad(path, f"label key must be a string, not {type_name(key)}")
        return False
    prefix, slash, name = key.rpartition("/")
    if (slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or not _LABEL_NAME.match(name):
        r.bad(path, f"{key!r} is not a valid label key")
        return False
    return True


def check_label_value(r: Reader, value: object, path: str) -> bool:
    if not isinstance(value, str):
        r.bad(path, f"label value must be a string, not {type_name(value)}")
        return False
    if value and not _LABEL_NAME.match(value):
        r.bad(path, f"{value!r} is not a valid label value")
        return False
    return True


def parse_labels(r: Reader, value: object, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        r.bad(path, f"must be a mapping, not {type_name(value)}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if check_label_key(r, k, join(path, str(k))) and check_label_value(r, v, join(path, str(k))):
            out[k] = v
    return out


def parse_selector(r: Reader, value: object, path: str) -> LabelSelector:
    m = r.fields(value, path, ("matchLabels", "matchExpressions"))
    labels = parse_labels(r, m.get("matchLabels"), join(path, "matchLabels"))
    reqs: list[Requirement] = []
    for p, item in r.items(m, "matchExpressions", path):
        e = r.fields(item, p, ("key", "operator", "values"), required=("key", "operator"))
        key = e.get("key")
        if key is not None and not check_label_key(r, key, join(p, "key")):
            continue
        op_text = r.string(e, "operator", p)
        try:
            op = Operator(op_text)
        except ValueError:
            if op_text:
                r.bad(join(p, "operator"), f"{op_text!r} is not one of In, NotIn, Exists, DoesNotExist")
            continue
        values = r.strings(e, "values", p)
        if op in (Operator.IN, Operator.NOT_IN) and not values:
            r.bad(join(p, "values"), f"operator {op.value} needs at least one value")
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
            r.bad(join(p, "values"), f"operator {op.value} takes no values")
        req = Requirement(str(key), op, tuple(sorted(values)))
        if req in reqs:
            r.bad(p, "expression is listed twice")
        reqs.append(req)
    return LabelSelector(tuple(sorted(labels.items())), tuple(reqs))


@dataclasses.dataclass(frozen=True)
class Meta:
    kind: str
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


META_FIELDS = (
    "name",
    "namespace",
    "labels",
    "annotations",
    # Present when a document comes from `kubectl get -o yaml`; ignored.
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "finalizers",
    "ownerReferences",
)


def parse_meta(r: Reader, doc: Mapping[str, Any], kind: str, *, default_namespace: str) -> Meta:
    m = r.fields(doc.get("metadata"), "metadata", META_FIELDS, required=("name",))
    name = r.string(m, "name", "metadata")
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        r.bad("metadata.name", f"{name!r} is not a valid name (lowercase letters, digits, '-' and '.')")
    namespace = r.string(m, "namespace", "metadata", default=default_namespace)
    if namespace and not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
        r.bad("metadata.namespace", f"{namespace!r} is not a valid namespace name")
    labels = parse_labels(r, m.get("labels"), "metadata.labels")
    annotations = m.get("annotations")
    if annotations is not None and (
        not isinstance(annotations, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
    ):
        r.bad("metadata.annotations", "must be a mapping of strings to strings")
    return Meta(kind, namespace, name, tuple(sorted(labels.items())))
