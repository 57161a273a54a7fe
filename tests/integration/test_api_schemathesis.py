"""Property-based tests of the real manager process against its own OpenAPI document (schemathesis): valid and
invalid requests for every operation; no answer may be a 5xx, and every error is problem+json."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.generation import GenerationMode

from tests.integration.manager_proc import RunningManager, running_manager

EXAMPLES = 10  # per operation and mode: the whole run stays well under a minute


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningManager]:
    with running_manager(tmp_path_factory.mktemp("schemathesis") / "manager") as running:
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_operation_answers_5xx(manager: RunningManager, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{manager.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    seen: dict[int, int] = {}
    failures: list[str] = []
    session = requests.Session()  # one connection pool: a new one per call costs more than the call
    session.trust_env = False
    for operation in operations:

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            if case.headers:
                case.headers.pop("Authorization", None)  # the generated (empty) token; ours is sent instead
            response = case.call(base_url=manager.url, session=session, headers=manager.headers, timeout=10)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
            if response.status_code >= 400:
                kind = response.headers.get("content-type") or [""]
                kind = kind[0] if isinstance(kind, list) else kind
                assert kind.startswith("application/problem+json"), response.text

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # No invalid request exists for this operation (e.g. GET /healthz has no input to break).
            assert mode is GenerationMode.NEGATIVE, operation.label
    session.close()
    assert not failures, "\n".join(failures[:10])
    assert manager.process.poll() is None, "the manager survived"
    assert any(400 <= status < 500 for status in seen), seen
