"""The Prometheus registry: golden exposition text (format 0.0.4), escaping, label checks."""

from __future__ import annotations

import ast
import math
import pathlib

import pytest

from metalhorn.common import errors, metrics


def test_golden_exposition() -> None:
    registry = metrics.Registry()
    reads = registry.counter("metalhorn_volume_read_bytes_total", "Bytes read from a volume.", labels=("volume",))
    up = registry.gauge("metalhorn_up", "1 while the daemon runs.")
    latency = registry.histogram(
        "metalhorn_volume_write_seconds", "Write latency.", labels=("volume",), buckets=(0.001, 0.01, 0.1)
    )
    errors_total = registry.counter("metalhorn_controller_errors_total", "Reconcile errors.", labels=("controller",))
    reads.labels(volume="v2").inc(512)
    reads.labels(volume="v1").inc(4096)
    reads.labels(volume="v1").inc(4096)
    up.set(1)
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):
        latency.labels(volume="v1").observe(seconds)
    assert errors_total.label_names == ("controller",)

    assert registry.render() == (
        "# HELP metalhorn_volume_read_bytes_total Bytes read from a volume.\n"
        "# TYPE metalhorn_volume_read_bytes_total counter\n"
        'metalhorn_volume_read_bytes_total{volume="v1"} 8192\n'
        'metalhorn_volume_read_bytes_total{volume="v2"} 512\n'
        "# HELP metalhorn_up 1 while the daemon runs.\n"
        "# TYPE metalhorn_up gauge\n"
        "metalhorn_up 1\n"
        "# HELP metalhorn_volume_write_seconds Write latency.\n"
        "# TYPE metalhorn_volume_write_seconds histogram\n"
        'metalhorn_volume_write_seconds_bucket{volume="v1",le="0.001"} 2\n'
        'metalhorn_volume_write_seconds_bucket{volume="v1",le="0.01"} 3\n'
        'metalhorn_volume_write_seconds_bucket{volume="v1",le="0.1"} 4\n'
        'metalhorn_volume_write_seconds_bucket{volume="v1",le="+Inf"} 5\n'
        'metalhorn_volume_write_seconds_sum{volume="v1"} 3.0535\n'
        'metalhorn_volume_write_seconds_count{volume="v1"} 5\n'
        "# HELP metalhorn_controller_errors_total Reconcile errors.\n"
        "# TYPE metalhorn_controller_errors_total counter\n"
    )


def test_unlabelled_metrics_start_at_zero_and_unlabelled_histogram() -> None:
    registry = metrics.Registry()
    registry.counter("a_total", "A.")
    h = registry.histogram("b_seconds", "B.", buckets=(1, 2))
    h.observe(2)
    assert registry.render() == (
        "# HELP a_total A.\n# TYPE a_total counter\na_total 0\n"
        "# HELP b_seconds B.\n# TYPE b_seconds histogram\n"
        'b_seconds_bucket{le="1"} 0\nb_seconds_bucket{le="2"} 1\nb_seconds_bucket{le="+Inf"} 1\n'
        "b_seconds_sum 2\nb_seconds_count 1\n"
    )


def test_escaping() -> None:
    registry = metrics.Registry()
    g = registry.gauge("g", 'Help with \\ backslash,\nnewline and "quotes".', labels=("path",))
    g.labels(path='C:\\dir\n"x"').set(0.25)
    assert registry.render() == (
        '# HELP g Help with \\\\ backslash,\\nnewline and "quotes".\n'
        "# TYPE g gauge\n"
        'g{path="C:\\\\dir\\n\\"x\\""} 0.25\n'
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (3.0, "3"), (-2, "-2"), (0.5, "0.5"), (1e20, "1e+20"), (math.inf, "+Inf"), (-math.inf, "-Inf")],
    ids=["zero", "integral-float", "negative", "fraction", "huge", "inf", "minus-inf"],
)
def test_format_value(value: float, text: str) -> None:
    assert metrics.format_value(value) == text


def test_format_nan() -> None:
    assert metrics.format_value(math.nan) == "NaN"


def test_gauge_operations_remove_and_clear() -> None:
    registry = metrics.Registry()
    modes = registry.gauge("metalhorn_replica_mode", "Mode.", labels=("replica", "mode"))
    modes.labels(replica="r1", mode="RW").set(1)
    modes.labels(replica="r2", mode="RW").inc(2)
    modes.labels(replica="r2", mode="RW").dec()
    assert modes.labels(replica="r2", mode="RW").value == 1
    modes.remove(replica="r1", mode="RW")
    assert 'replica="r1"' not in registry.render()
    modes.clear()
    assert registry.render() == "# HELP metalhorn_replica_mode Mode.\n# TYPE metalhorn_replica_mode gauge\n"
    total = registry.gauge("total", "T.")
    total.set(5)
    total.clear()
    assert total.value == 0


def test_on_collect_runs_before_render() -> None:
    registry = metrics.Registry()
    volumes = registry.gauge("metalhorn_volumes", "Volumes.")
    state = {"volumes": 3}
    registry.on_collect(lambda: volumes.set(state["volumes"]))
    assert registry.render().endswith("metalhorn_volumes 3\n")
    state["volumes"] = 4
    assert registry.render().endswith("metalhorn_volumes 4\n")


def test_registries_are_independent() -> None:
    one, two = metrics.Registry(), metrics.Registry()
    one.counter("c_total", "C.").inc()
    two.counter("c_total", "C.")
    assert one.get("c_total").render() != two.get("c_total").render()


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda r: r.counter("bad name", "x"), errors.InvalidArgument),
        (lambda r: r.counter("c", "x", labels=("bad-label",)), errors.InvalidArgument),
        (lambda r: r.counter("c", "x", labels=("__reserved",)), errors.InvalidArgument),
        (lambda r: r.counter("c", "x", labels=("a", "a")), errors.InvalidArgument),
        (lambda r: r.histogram("h", "x", labels=("le",)), errors.InvalidArgument),
        (lambda r: r.histogram("h", "x", buckets=(2, 1)), errors.InvalidArgument),
        (lambda r: r.histogram("h", "x", buckets=()), errors.InvalidArgument),
        (lambda r: r.counter("c", "x").inc(-1), errors.InvalidArgument),
        (lambda r: r.counter("c", "x", labels=("v",)).inc(), errors.InvalidArgument),
        (lambda r: r.counter("c", "x", labels=("v",)).labels(w="1"), errors.InvalidArgument),
        (lambda r: r.counter("c", "x", labels=("v", "w")).labels(v="1"), errors.InvalidArgument),
        (lambda r: (r.counter("c", "x"), r.gauge("c", "y")), errors.AlreadyExists),
        (lambda r: r.get("nothing"), errors.NotFound),
    ],
    ids=[
        "metric-name",
        "label-name",
        "reserved-label",
        "repeated-label",
        "histogram-le",
        "buckets-decreasing",
        "buckets-empty",
        "counter-down",
        "labelled-without-labels",
        "wrong-label",
        "missing-label",
        "duplicate-metric",
        "unknown-metric",
    ],
)
def test_refusals(build: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        build(metrics.Registry())  # type: ignore[operator]


def test_explicit_inf_bucket_is_not_doubled() -> None:
    h = metrics.Registry().histogram("h", "x", buckets=(1, math.inf))
    assert h.bounds == (1.0, math.inf)


def test_content_type() -> None:
    assert metrics.CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_metrics_module_is_pure() -> None:
    path = pathlib.Path(metrics.__file__)
    names: set[str] = set()
    for item in ast.walk(ast.parse(path.read_text())):
        if isinstance(item, ast.Import):
            names.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module:
            names.add(item.module.split(".")[0])
    assert not names & {"asyncio", "socket", "os", "subprocess", "threading", "time", "prometheus_client"}
