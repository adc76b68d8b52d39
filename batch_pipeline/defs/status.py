"""The status sensor: poll OpenAI for batches in flight and launch the results run of finished ones."""

import dagster as dg

from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.stages.status import PollSettings, poll_due
from batch_pipeline.states import RESULTS_WORKING
from batch_pipeline.store import batches as store

MAX_RESULTS_RUNS_PER_TICK = 50
# A tick stays under 5 s (bench.sensors) even with many batches finishing at once: polling stops
# after the budget and the rest wait for the next tick (a second later in simulator mode); a call
# that hangs costs at most its timeout, and a batch whose check failed is checked at its next poll.
POLL_TIMEOUT_SECONDS = 2.0
POLL_BUDGET_SECONDS = 3.0


def results_run_request(batch_id: int, openai_batch_id: str | None, launch_count: int) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"results:{batch_id}:{openai_batch_id}:{launch_count}",
        partition_key=str(batch_id),
        tags={"batch_id": str(batch_id), "stage": "results"},
    )


def make_status_sensor(results_job: dg.JobDefinition, interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="status_sensor",
        job=results_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Polls OpenAI for batches in flight (bounded per tick) and launches results runs.",
    )
    def status_sensor(
        context: dg.SensorEvaluationContext,
        postgres: PostgresParam,
        openai: OpenAIParam,
        settings: SettingsParam,
    ) -> dg.SensorResult:
        poll = PollSettings(settings.openai_poll_interval_seconds, settings.token_limit_backoff)
        # A sensor tick must end well inside Dagster's 60 s deadline even when OpenAI is slow:
        # short calls, no SDK retry, and a time budget; what is left waits for the next tick.
        client = openai.client(timeout=POLL_TIMEOUT_SECONDS, max_retries=0)
        finished = poll_due(
            postgres.connect, client, poll, settings.status_poll_max_per_tick, POLL_BUDGET_SECONDS
        )
        if finished:
            context.log.info("batches finished at OpenAI: %s", finished)
        # Re-emitting every batch awaiting its results run is safe: the run key makes it launch once.
        with postgres.connect() as conn:
            due = store.results_due(conn, MAX_RESULTS_RUNS_PER_TICK)
            # 'openai_completed' too: a results run that never started leaves it there, key spent.
            stalled = store.relaunch_stalled(conn, ("openai_completed", *RESULTS_WORKING))
        if stalled:
            context.log.warning("relaunching stalled results runs of batches %s", [r["id"] for r in stalled])
        return dg.SensorResult(
            run_requests=[
                results_run_request(r["id"], r["openai_batch_id"], r["launch_count"])
                for r in [*due, *stalled]
            ]
        )

    return status_sensor
