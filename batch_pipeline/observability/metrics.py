"""The API process's own counters, correct with ``batchman api --workers N``.

Figures that live in the database (queues, batches, deliveries, tokens) are read at scrape time by
``admin.metrics``: any worker answers them alike. What only a worker sees (each intake call) is counted
here; with several workers the counters live in files of a per-start directory (prometheus-client's
multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``) so that whichever worker is scraped sums all of them.
``start_multiprocess_dir`` must run before ``prometheus_client`` is first imported in a process (the
value store is chosen at import), so this module imports it only inside functions.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from typing import Any

# prometheus-client's own variable, not one of our settings.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def start_multiprocess_dir() -> str:
    """A fresh directory for this start's worker files (an old one would add a past run's counts)."""
    path = tempfile.mkdtemp(prefix="batchman-metrics-")
    os.environ[MULTIPROC_ENV] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def intake_counter() -> Any:
    """``batchman_intake_requests_total{route, outcome, reason}``: each item a POST took in or refused."""
    from prometheus_client import Counter

    return Counter(
        "batchman_intake_requests",
        "Requests submitted through the API, by route (single, bulk), outcome and reason",
        ["route", "outcome", "reason"],
    )


def count_intake(route: str, outcome: str, reason: str, n: int = 1) -> None:
    if n > 0:
        _intake_child(route, outcome, reason).inc(n)


@cache
def _intake_child(route: str, outcome: str, reason: str) -> Any:
    # Once per label set: ``labels()`` validates and locks on every call, on the single-POST hot path.
    return intake_counter().labels(route, outcome, reason)


def render_process_metrics() -> bytes:
    """This process's counters, or every worker's when they share a multiprocess directory."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    intake_counter()  # so that the family is listed (empty) before the first request
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
