"""The soak harness (``make soak``) at a small size, so the harness itself is tested by ``make test``:
2,000 requests through ``batchman up`` with the simulator's faults on, through the three doors, to a
webhook receiver and a RabbitMQ queue. Nothing lost, nothing created twice at OpenAI, every result
delivered, and the faults really happened (an expired batch, a batch failed at validation, HTTP faults,
lost answers, per-line server errors that were resubmitted)."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.soak.plan import EXPIRE_MARKER, INVALID_MARKER, Plan
from bench.soak.report import check, show
from bench.soak.run import run
from tests.conftest import free_port

# Minutes on our machines: in `make soak` (pytest -m soak), not in `make test`.
pytestmark = [pytest.mark.process, pytest.mark.rabbitmq, pytest.mark.soak]

REQUESTS = 2_000
# The harness's own wait for every result; the pipeline's op retries back off for up to a minute
# under the faults, and the machine may be shared.
DELIVERED_WITHIN_SECONDS = 900
# Sensors and polling every second (as tests/batch_pipeline/test_up_end_to_end.py): the faults make the
# pipeline go round several times (resubmissions, op retries), each round paced by these. On a loaded
# machine starting a run process (which imports the code location) can take longer than the 60 s
# Dagster's daemon waits for its code server to start one by default; the launch then fails, and a
# batch whose run never started gets only Dagster's run retries (docs/benchmarks.md, "Soak").
FAST = {
    "BATCH_MAX_AGE_SECONDS": "1",
    "SENSOR_INTERVAL_SECONDS": "1",
    "OPENAI_POLL_INTERVAL_SECONDS": "1",
    "DAGSTER_GRPC_TIMEOUT_SECONDS": "600",
}


def test_soak_at_a_small_size_keeps_every_promise_under_faults(pg_server_url: str, rabbitmq_url: str) -> None:
    plan = Plan(total=REQUESTS, faults=True, bulk_call_items=500)
    ports = {name: free_port() for name in ("PORT", "DAGSTER_PORT", "SIMULATOR_PORT", "SINKS")}

    outcome = run(
        plan,
        ports=ports,
        timeout=DELIVERED_WITHIN_SECONDS,
        extra_env=FAST,
        progress=False,
        server_url=pg_server_url,
    )
    show(outcome, target_seconds=60)  # printed for -s / a failure's captured output

    assert check(outcome, exactly_once=False) == []
    assert len(outcome.acknowledged) == REQUESTS + 2  # the load and the two fault markers
    assert sorted(outcome.markers.values()) == [EXPIRE_MARKER, INVALID_MARKER]
    doors = {d.door: len(d.acknowledged) for d in outcome.doors}
    assert doors == {"bulk": plan.bulk, "single": plan.singles, "rabbit": plan.rabbit}
    assert all(doors.values())
    # Half the results went to each destination, and each group to both.
    received = {sink: len(ids) for sink, ids in outcome.counts.items()}
    assert abs(received["webhook"] - received["queue"]) <= 10, received
    # The faults happened: a batch expired (more than one when the marked line itself was among the
    # expired half or drew a server_error: it carries its marker into its next batch), one failed at
    # validation (its marked line fails for good, the others go again), the rest completed.
    statuses = Counter(b.openai_status for b in outcome.batches)
    assert statuses["expired"] >= 1 and statuses["failed"] == 1, statuses
    http_faults = outcome.sim_stats["http_faults"]
    assert http_faults.get("429", 0) + http_faults.get("500", 0) > 0, http_faults
    assert http_faults.get("drop_after", 0) == 2, http_faults  # one upload and one create answer lost
    resubmitted = sum(1 for _, resubmits in outcome.stored.values() if resubmits)
    assert resubmitted > 0  # expired halves, the failed batch's other lines, per-line server errors
    states = Counter(state for state, _ in outcome.stored.values())
    assert set(states) <= {"delivered", "failed"}, states
    assert states["failed"] >= 1  # at least the invalid line, delivered as its error
