"""Delivery in Dagster: ``deliver_job`` per batch and wave, ``delivery_sensor``, ``redeliver_job``.

One run per batch per wave, never per request: the run claims the batch's due results and sends them
with bounded concurrency (``batch_pipeline.delivery.deliverer``). Retries are rows with a later
``next_attempt_at``; the sensor launches the next wave when they fall due.
"""

import asyncio

import dagster as dg
import psycopg
from pydantic import Field

from batch_pipeline.config import ConfigError, get_settings, normalize_database_url
from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import PipelineSettingsResource, PostgresResource, RabbitMQResource
from batch_pipeline.delivery.deliverer import DeliveryOptions, deliver_batch
from batch_pipeline.delivery.webhook import WebhookOptions
from batch_pipeline.store import deliveries as store
from batch_pipeline.url_policy import EgressPolicy

# Run tag read by redeliver_job, so a backfill over many batches can say "all" (default: failed).
REDELIVER_ONLY_TAG = "batchman/redeliver_only"


def delivery_options(pipeline: PipelineSettingsResource, rabbitmq: RabbitMQResource) -> DeliveryOptions:
    hosts = frozenset(h.strip().lower() for h in pipeline.webhook_allowed_hosts.split(",") if h.strip())
    return DeliveryOptions(
        webhook=WebhookOptions(
            connect_timeout=pipeline.webhook_connect_timeout_seconds,
            read_timeout=pipeline.webhook_read_timeout_seconds,
            concurrency=pipeline.delivery_concurrency,
            signing_secret=pipeline.webhook_signing_secret or None,
            policy=EgressPolicy(pipeline.webhook_block_private_networks, hosts),
        ),
        rabbitmq_url=rabbitmq.url or None,
        rabbitmq_window=pipeline.rabbitmq_publish_window,
        rabbitmq_confirm_timeout=pipeline.rabbitmq_confirm_timeout_seconds,
        schedule=tuple(float(v) for v in pipeline.delivery_retry_schedule_seconds.split(",") if v.strip()),
        jitter=pipeline.delivery_retry_jitter,
        disable_retry=pipeline.disable_delivery_retry,
        claim_size=pipeline.delivery_claim_batch_size,
        lease_seconds=pipeline.delivery_claim_lease_seconds,
    )


def _batch_id(context: dg.OpExecutionContext) -> int:
    return int(context.partition_key)


@dg.op(out=dg.Out(bool, description="False when the batch is not (any longer) in a delivery state."))
def begin_delivery(context: dg.OpExecutionContext, postgres: PostgresResource) -> bool:
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
    postgres: PostgresResource,
    rabbitmq: RabbitMQResource,
    pipeline: PipelineSettingsResource,
) -> dict:
    """Send every due result of the batch; settle the batch outcome when nothing is left open."""
    batch_id = _batch_id(context)
    try:
        if not proceed:
            return {"batch_id": batch_id, "attempts": 0}
        opts = delivery_options(pipeline, rabbitmq)
        report = asyncio.run(deliver_batch(normalize_database_url(postgres.dsn), batch_id, opts))
    finally:
        # Lets the sensor launch the next wave (for retries due later) without waiting for staleness.
        with postgres.connect() as conn:
            store.release_batch(conn, batch_id)
    summary = report.as_dict()
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
    context: dg.OpExecutionContext, config: RedeliverConfig, postgres: PostgresResource
) -> bool:
    """Make the batch's results due again (``only``: failed | all, from the run tag or config)."""
    only = context.run.tags.get(REDELIVER_ONLY_TAG, config.only)
    if only not in store.REDELIVER_STATES:
        raise dg.Failure(f"only must be 'failed' or 'all', got {only!r}")
    batch_id = _batch_id(context)

    async def reset() -> dict | None:
        async with await psycopg.AsyncConnection.connect(normalize_database_url(postgres.dsn)) as conn:
            return await store.redeliver_batch(conn, batch_id, only)

    result = asyncio.run(reset())
    if result is None:
        raise dg.Failure(f"batch {batch_id} does not exist")
    context.log.info(f"batch {batch_id}: {result['requeued']} results due again (only={only})")
    with postgres.connect() as conn:
        return (
            store.begin_delivery(conn, batch_id, f"redelivery run {context.run_id} only={only}") is not None
        )


# Every run carries its batch id as a tag, so a tag concurrency limit can keep one run per batch.
_partitioned_config = dg.PartitionedConfig(
    partitions_def=batch_partitions,
    run_config_for_partition_key_fn=lambda _key: {},
    tags_for_partition_key_fn=lambda key: {"batch_id": key},
)


@dg.job(partitions_def=batch_partitions, executor_def=dg.in_process_executor, config=_partitioned_config)
def deliver_job() -> None:
    deliver_results(begin_delivery())


@dg.job(partitions_def=batch_partitions, executor_def=dg.in_process_executor, config=_partitioned_config)
def redeliver_job() -> None:
    deliver_results(reset_for_redelivery())


def _sensor_interval() -> int:
    try:
        return get_settings().sensor_interval_seconds
    except ConfigError:
        return 30


@dg.sensor(
    job=deliver_job,
    minimum_interval_seconds=_sensor_interval(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def delivery_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, pipeline: PipelineSettingsResource
) -> dg.SensorResult:
    """Launch deliver_job for batches ready to deliver and for batches whose retries are due.

    The run key includes the batch's delivery wave, bumped in the same statement that picks the batch,
    so every wave gets its own run while a repeated tick cannot launch the same wave twice.
    """
    with postgres.connect() as conn:
        due = store.due_batches(
            conn, pipeline.delivery_sensor_max_runs, pipeline.delivery_claim_lease_seconds
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
