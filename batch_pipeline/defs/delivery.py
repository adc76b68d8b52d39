"""Delivery in Dagster: ``deliver_job`` per batch and wave, ``delivery_sensor``, ``redeliver_job``.

One run per batch per wave, never per request: the run claims the batch's due results and sends them
with bounded concurrency (``batch_pipeline.delivery.deliverer``). Retries are rows with a later
``next_attempt_at``; the sensor launches the next wave when they fall due.
"""

import asyncio
import time

import dagster as dg
import psycopg
from pydantic import Field

from batch_pipeline.defs import reports
from batch_pipeline.defs.partitions import batch_partitions, batch_run_config
from batch_pipeline.defs.resources import PostgresParam, SettingsParam
from batch_pipeline.delivery.deliverer import DeliveryOptions, deliver_batch
from batch_pipeline.states import REDELIVER_BATCH_REQUESTS
from batch_pipeline.store import deliveries as store

# Run tag read by redeliver_job, so a backfill over many batches can say "all" (default: failed).
REDELIVER_ONLY_TAG = "batchman/redeliver_only"


def _batch_id(context: dg.OpExecutionContext) -> int:
    return int(context.partition_key)


@dg.op(out=dg.Out(bool, description="False when the batch is not (any longer) in a delivery state."))
def begin_delivery(context: dg.OpExecutionContext, postgres: PostgresParam) -> bool:
    """Conditional transition to 'delivering'; safe to re-run (an already delivering batch goes on)."""
    with postgres.connect() as conn:
        state = store.begin_delivery(conn, _batch_id(context), f"delivery run {context.run_id}")
    if state is None:
        context.log.warning(f"batch {context.partition_key} is not deliverable; nothing to do")
    return state is not None


@dg.op
def deliver_results(
    context: dg.OpExecutionContext,
    proceed: bool,
    postgres: PostgresParam,
    settings: SettingsParam,
) -> dict:
    """Send every due result of the batch; settle the batch outcome when nothing is left open."""
    if not proceed:
        with postgres.connect() as conn:
            store.release_batch(conn, _batch_id(context))
        return {"batch_id": _batch_id(context), "attempts": 0}
    return send_due_results(context, postgres, settings)


def send_due_results(
    context: dg.OpExecutionContext, postgres: PostgresParam, settings: SettingsParam
) -> dict:
    """The delivery of a batch this run has begun (also the results run's last step): sends, records
    the ``batch_deliveries`` materialization, and releases the batch for the sensor's next wave."""
    batch_id = _batch_id(context)
    started = time.monotonic()
    try:
        opts = DeliveryOptions.from_settings(settings)
        report = asyncio.run(deliver_batch(postgres.dsn, batch_id, opts))
    finally:
        # Lets the sensor launch the next wave (for retries due later) without waiting for staleness.
        with postgres.connect() as conn:
            store.release_batch(conn, batch_id)
    summary = report.as_dict()
    seconds = time.monotonic() - started
    reports.log(context, postgres, lambda c: reports.after_delivery(c, batch_id, summary, seconds))
    context.add_output_metadata(
        {
            "attempts": report.attempts,
            "states": dg.MetadataValue.json(summary["states"]),
            "outcomes": dg.MetadataValue.json(summary["outcomes"]),
            "batch_state": report.batch_state or "delivering",
        }
    )
    return summary


class RedeliverConfig(dg.Config):
    only: str = Field("failed", description="'failed' (delivery_failed results) or 'all' (every result).")


@dg.op(out=dg.Out(bool))
def reset_for_redelivery(
    context: dg.OpExecutionContext, config: RedeliverConfig, postgres: PostgresParam
) -> bool:
    """Make the batch's results due again (``only``: failed | all, from the run tag or config)."""
    only = context.run.tags.get(REDELIVER_ONLY_TAG, config.only)
    if only not in REDELIVER_BATCH_REQUESTS:
        raise dg.Failure(f"only must be 'failed' or 'all', got {only!r}")
    batch_id = _batch_id(context)

    async def reset() -> dict | None:
        async with await psycopg.AsyncConnection.connect(postgres.dsn) as conn:
            return await store.redeliver_batch(conn, batch_id, only)

    result = asyncio.run(reset())
    if result is None:
        raise dg.Failure(f"batch {batch_id} does not exist")
    context.log.info(f"batch {batch_id}: {result['requeued']} results due again (only={only})")
    with postgres.connect() as conn:
        return (
            store.begin_delivery(conn, batch_id, f"redelivery run {context.run_id} only={only}") is not None
        )


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("delivery"),
    description=(
        "Send the batch's due results to their webhooks or queues (launched by delivery_sensor, one run "
        "per wave). Per state: ready_to_deliver / delivering → claims the due results, sends them and "
        "settles the batch (delivered, partially_delivered or delivery_failed) when none is left open; "
        "retries due later are the next wave; any other state → nothing. Already delivered results are "
        "never sent again by this job: use redeliver_job."
    ),
)
def deliver_job() -> None:
    deliver_results(begin_delivery())


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("delivery"),
    description=(
        "Send a batch's results again. Which: the run tag `batchman/redeliver_only` = `failed` "
        "(default; only delivery_failed results) or `all` (every stored result), or the op config "
        "`only`; the tag wins, so a backfill launched with the tag applies it to every batch. Per "
        "state: delivered / partially_delivered / delivery_failed / delivering / ready_to_deliver → "
        "makes those results due and delivers them in this run; any other state → nothing is sent; "
        "a batch that no longer exists → the run fails."
    ),
)
def redeliver_job() -> None:
    deliver_results(reset_for_redelivery())


def make_delivery_sensor(deliver_job: dg.JobDefinition, interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="delivery_sensor",
        job=deliver_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def delivery_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresParam, settings: SettingsParam
    ) -> dg.SensorResult:
        """Launch deliver_job for batches ready to deliver and for batches whose retries are due.

        The run key includes the batch's delivery wave, bumped in the same statement that picks the
        batch, so every wave gets its own run while a repeated tick cannot launch the same wave twice.
        """
        with postgres.connect() as conn:
            due = store.due_batches(
                conn, settings.delivery_sensor_max_runs, settings.delivery_claim_lease_seconds
            )
        keys = [str(batch_id) for batch_id, _ in due]
        missing = [k for k in keys if not context.instance.has_dynamic_partition(batch_partitions.name, k)]
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"deliver:{batch_id}:{wave}",
                    partition_key=str(batch_id),
                    tags={"batch_id": str(batch_id)},
                )
                for batch_id, wave in due
            ],
            dynamic_partitions_requests=[batch_partitions.build_add_request(missing)] if missing else [],
        )

    return delivery_sensor
