"""A small Prometheus registry: counters, gauges and histograms with labels, rendered as text format 0.0.4.

No module-level registry: each daemon builds a `Registry`, hands it to the subsystems that record into it, and
serves `registry.render()` on ``/metrics`` with `CONTENT_TYPE`. Tests build their own and compare text.

    registry = metrics.Registry()
    reads = registry.counter("metalhorn_volume_read_bytes_total", "Bytes read from the volume.", labels=("volume",))
    reads.labels(volume="v1").inc(4096)
    modes = registry.gauge("metalhorn_replica_mode", "1 for the replica's current mode.", labels=("replica", "mode"))
    registry.on_collect(refresh_modes)   # runs before each render: gauges computed from state at scrape time
    text = registry.render()

Values live in the event loop's thread (the daemons are asyncio); nothing here locks.
The format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text format 0.0.4) -- one ``# HELP``
and one ``# TYPE`` line per family, then samples; HELP escapes ``\\`` and newline, label values also ``"``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from metalhorn.common import errors

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def format_value(value: float) -> str:
    """Sample values as Prometheus prints them: integers without a fraction, +Inf/-Inf/NaN spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)) + "}"


class CounterChild:
    """One labelled series of a counter: only goes up (a restart resets it; Prometheus handles that)."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise errors.InvalidArgument(f"a counter only goes up; cannot add {amount}")
        self.value += amount


class GaugeChild:
    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # upper bounds, the last one +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[int]:
        total, out = 0, []
        for n in self.counts:
            total += n
            out.append(total)
        return out


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[ChildT]):
    """A metric name with its label names; one child per combination of label values."""

    kind = ""

    def __init__(self, name: str, help: str, label_names: Sequence[str]) -> None:
        if not _METRIC_NAME.match(name):
            raise errors.InvalidArgument(f"metric name {name!r} must match {_METRIC_NAME.pattern}")
        for label in label_names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise errors.InvalidArgument(
                    f"label name {label!r} of {name} must match {_LABEL_NAME.pattern} and not start with __"
                )
        if len(set(label_names)) != len(label_names):
            raise errors.InvalidArgument(f"metric {name} repeats a label name: {list(label_names)}")
        self.name = name
        self.help = help
        self.label_names = tuple(label_names)
        self._children: dict[tuple[str, ...], ChildT] = {}
        if not self.label_names:
            self._children[()] = self._new_child()

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise errors.InvalidArgument(
                f"metric {self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in self.label_names)

    def labels(self, **labels: str) -> ChildT:
        """The series for these label values, created at zero on first use."""
        key = self._key(labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def remove(self, **labels: str) -> None:
        """Forget one series (a deleted volume should stop being exported)."""
        self._children.pop(self._key(labels), None)

    def clear(self) -> None:
        """Forget every series (before re-setting gauges computed from current state)."""
        self._children.clear()
        if not self.label_names:
            self._children[()] = self._new_child()

    def _unlabelled(self) -> ChildT:
        if self.label_names:
            raise errors.InvalidArgument(f"metric {self.name} has labels {list(self.label_names)}: use .labels()")
        return self._children[()]

    def samples(self) -> Iterable[str]:
        for key in sorted(self._children):
            yield from self._child_samples(key, self._children[key])

    def _child_samples(self, key: tuple[str, ...], child: ChildT) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Family[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    @property
    def value(self) -> float:
        return self._unlabelled().value

    def _child_samples(self, key: tuple[str, ...], child: CounterChild) -> Iterable[str]:
        yield f"{self.name}{_label_text(self.label_names, key)} {format_value(child.value)}"


class Gauge(_Family[GaugeChild]):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    @property
    def value(self) -> float:
        return self._unlabelled().value

    def _child_samples(self, key: tuple[str, ...], child: GaugeChild) -> Iterable[str]:
        yield f"{self.name}{_label_text(self.label_names, key)} {format_value(child.value)}"


class Histogram(_Family[HistogramChild]):
    kind = "histogram"

    def __init__(self, name: str, help: str, label_names: Sequence[str], buckets: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise errors.InvalidArgument(f"histogram {name} buckets must be non-empty and increasing: {buckets}")
        if any(math.isnan(b) for b in bounds):
            raise errors.InvalidArgument(f"histogram {name} buckets must be numbers: {buckets}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        if "le" in label_names:
            raise errors.InvalidArgument(f"histogram {name} cannot have a label named 'le'")
        super().__init__(name, help, label_names)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _child_samples(self, key: tuple[str, ...], child: HistogramChild) -> Iterable[str]:
        names = (*self.label_names, "le")
        for bound, total in zip(self.bounds, child.cumulative(), strict=True):
            yield f"{self.name}_bucket{_label_text(names, (*key, format_value(bound)))} {total}"
        labels = _label_text(self.label_names, key)
        yield f"{self.name}_sum{labels} {format_value(child.sum)}"
        yield f"{self.name}_count{labels} {child.count}"


class Registry:
    """The metrics one daemon exports, in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._callbacks: list[Callable[[], None]] = []

    def _add(self, family: Counter | Gauge | Histogram) -> None:
        if family.name in self._families:
            raise errors.AlreadyExists(f"metric {family.name} is already registered")
        self._families[family.name] = family

    def counter(self, name: str, help: str, *, labels: Sequence[str] = ()) -> Counter:
        family = Counter(name, help, labels)
        self._add(family)
        return family

    def gauge(self, name: str, help: str, *, labels: Sequence[str] = ()) -> Gauge:
        family = Gauge(name, help, labels)
        self._add(family)
        return family

    def histogram(
        self, name: str, help: str, *, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        family = Histogram(name, help, labels, buckets)
        self._add(family)
        return family

    def get(self, name: str) -> Counter | Gauge | Histogram:
        try:
            return self._families[name]
        except KeyError:
            raise errors.NotFound(f"no metric named {name}") from None

    def on_collect(self, callback: Callable[[], None]) -> None:
        """Run `callback` before every render, to set gauges from current state (replica modes, allocations)."""
        self._callbacks.append(callback)

    def render(self) -> str:
        """The whole registry in text format 0.0.4."""
        for callback in self._callbacks:
            callback()
        return "".join(family.render() for family in self._families.values())
