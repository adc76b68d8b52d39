"""The upload job: one run per batch (partition) builds the JSONL, uploads it and creates the batch.

After the stage, the op reports ``batch_input`` and ``openai_batch`` for its partition (``reports``)."""

import asyncio
import time

import dagster as dg
import openai as openai_sdk
import psycopg

from batch_pipeline import openai_client as oai
from batch_pipeline.admin.batches import restart_batch
from batch_pipeline.admin.errors import BatchNotFound, InvalidBatchState
from batch_pipeline.defs import reports
from batch_pipeline.defs.partitions import batch_partitions, batch_run_config
from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.stages.upload import fail_batch, submit_batch, wait_for_credentials
from batch_pipeline.store.batching import BatchLimits
from batch_pipeline.store.model_limits import fetch_overrides_sync

# Transient OpenAI errors (after the SDK's own quick retries): back off and try the op again.
TRANSIENT_OPENAI_RETRY = dg.RetryPolicy(
    max_retries=4, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


@dg.op(retry_policy=TRANSIENT_OPENAI_RETRY, tags={"kind": "openai"})
def submit_to_openai(
    context: dg.OpExecutionContext,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
) -> dg.Output[str]:
    """Claims the batch (a conditional state change), so re-running a finished upload does nothing."""
    batch_id = int(context.partition_key)
    started = time.monotonic()
    output: dg.Output[str] | None = None
    try:
        output = _submit(context, postgres, openai, settings, batch_id)
        return output
    finally:
        # Also after a failure: whatever the batch reached (say, its file uploaded) shows in the
        # catalog. A run that found nothing to do adds nothing to the batch's history.
        if output is None or output.value != "skipped":
            seconds = time.monotonic() - started
            reports.log(context, postgres, lambda c: reports.after_upload(c, settings, batch_id, seconds))


def _submit(
    context: dg.OpExecutionContext,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
    batch_id: int,
) -> dg.Output[str]:
    with postgres.connect() as conn:
        overrides = fetch_overrides_sync(conn)
    try:
        result = submit_batch(
            postgres.connect,
            openai.client(),
            batch_id,
            lambda model: token_limit_for(model, overrides),
            settings.openai_poll_interval_seconds,
            BatchLimits.from_settings(settings),
        )
    except Exception as exc:
        if oai.is_transient(exc):
            raise
        if isinstance(exc, openai_sdk.APIStatusError) and exc.status_code in (401, 403):
            code, message = oai.refusal(exc)
            wait_for_credentials(postgres.connect, batch_id, f"{message} (check OPENAI_API_KEY)")
            context.log.error("batch %s waits: OpenAI refused the API key: %s", batch_id, message)
            return dg.Output("waiting_for_credentials", metadata={"error": message})
        if isinstance(exc, openai_sdk.APIStatusError):
            # Permanent (400/404/422): retrying cannot help. Every request of the batch gets
            # OpenAI's message as its (delivered) error line.
            code, message = oai.refusal(exc)
            fail_batch(postgres.connect, batch_id, message, code)
            context.log.error("batch %s failed permanently: %s", batch_id, exc)
            return dg.Output("failed", metadata={"error": str(exc)})
        raise dg.Failure(f"batch {batch_id}: upload failed: {exc}", allow_retries=False) from exc
    context.log.info("batch %s: %s %s", batch_id, result.outcome, result.detail)
    return dg.Output(
        result.outcome, metadata={"detail": result.detail, "openai_batch_id": result.openai_batch_id or ""}
    )


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("upload"),
    description=(
        "Build the batch's JSONL, upload it and create the OpenAI batch (crash-safe; launched by "
        "batching_sensor). Per state: ready / uploading / uploaded → uploads what is missing and creates "
        "the OpenAI batch (an earlier upload or create is adopted, never repeated); waiting_for_capacity → "
        "creates it if the model's token budget has room, else leaves it waiting; any later state → "
        "nothing (the run logs 'skipped'). To restart a failed batch use POST /api/batches/{id}/restart, "
        "then this job (or wait for the sensor)."
    ),
)
def upload_job() -> None:
    submit_to_openai()


@dg.op
def restart_failed(context: dg.OpExecutionContext, postgres: PostgresParam) -> str:
    """What POST /api/batches/{id}/restart does: a failed batch's undelivered requests go back to the
    queue (the batch becomes 'resubmitted'); the batching sensor puts them in a new batch."""
    batch_id = int(context.partition_key)

    async def restart() -> dict:
        async with await psycopg.AsyncConnection.connect(postgres.dsn) as conn:
            return await restart_batch(conn, batch_id)

    try:
        result = asyncio.run(restart())
    except (BatchNotFound, InvalidBatchState) as exc:
        context.log.info(f"batch {batch_id}: not restarted: {exc}")
        return "skipped"
    context.log.info(f"batch {batch_id}: {result['requeued_requests']} requests back in the queue")
    return "restarted"


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("upload"),
    description=(
        "Restart failed batches (as POST /api/batches/{id}/restart). Per state: failed → its "
        "undelivered requests go back to the queue and the batch becomes resubmitted; the batching "
        "sensor uploads them again in a new batch; any other state → nothing (logs 'skipped'), so a "
        "backfill over any batches is safe."
    ),
)
def restart_job() -> None:
    restart_failed()
