"""Fixtures for the fault and crash tests: the pipeline driver of ``tests/batch_pipeline/defs`` (its
Dagster jobs run for real against a real simulator server), with every wait the pipeline makes
between attempts kept short so that runs of faults take seconds, not minutes.

Tests marked ``soak`` (longer runs) are left out unless ``-m`` selects them: ``pytest -m soak``.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest

# The driver's fixtures, shared rather than copied (a conftest's fixtures are visible only below it).
from tests.batch_pipeline.defs.conftest import (  # noqa: F401
    Driver,
    Sim,
    add_requests,
    driver,
    pipeline_settings,
    sim,
)

# The SDK's own timeout in these tests: a held answer ("slow" fault) longer than this is a timeout.
CLIENT_TIMEOUT_SECONDS = 1.0
# The ops' RetryPolicy keeps its number of retries (the behaviour under test) but not its minutes.
QUICK_OP_RETRY = dg.RetryPolicy(max_retries=4, delay=0.05, backoff=dg.Backoff.EXPONENTIAL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``soak`` tests out of any run whose ``-m`` does not name them (e.g. ``make test-fast``'s
    ``-m "not process"`` replaces the ``-m "not soak"`` of addopts)."""
    if "soak" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("soak") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("soak")])
        items[:] = kept


@pytest.fixture
def quick_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production retry counts with test-sized waits: the SDK's backoff between its own retries
    (its count stays PIPELINE_MAX_RETRIES; a Retry-After header is still honoured), the SDK timeout,
    the status sensor's poll timeout, and the delay of the ops' RetryPolicy."""
    import openai._base_client as sdk_base

    from batch_pipeline.defs import resources, results, status, upload

    monkeypatch.setattr(sdk_base, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(sdk_base, "MAX_RETRY_DELAY", 0.05)
    monkeypatch.setattr(status, "POLL_TIMEOUT_SECONDS", CLIENT_TIMEOUT_SECONDS)
    original = resources.OpenAI.client

    def client(self: Any, **limits: Any) -> Any:
        limits["timeout"] = min(limits.get("timeout", CLIENT_TIMEOUT_SECONDS), CLIENT_TIMEOUT_SECONDS)
        return original(self, **limits)

    monkeypatch.setattr(resources.OpenAI, "client", client)
    for op in (upload.submit_to_openai, results.store_results, results.check_status_now):
        assert op.retry_policy == upload.TRANSIENT_OPENAI_RETRY  # the policy this shortens
        monkeypatch.setattr(op, "_retry_policy", QUICK_OP_RETRY)
    monkeypatch.setattr(results.store_results_if_done, "_retry_policy", QUICK_OP_RETRY)
