"""The results job: one run per finished OpenAI batch stores its output and error lines and then
delivers them (one run process instead of two, and no wait for the delivery sensor's tick); and
``refresh_status_job``, which checks one batch at OpenAI now (instead of at its next poll) and, when
OpenAI has finished it, stores and delivers its results in the same run.

After the stage, the op reports ``openai_batch`` and ``batch_results`` for its partition and the
accounting and input-line checks (``reports``)."""

import time

import dagster as dg

from batch_pipeline import openai_client as oai
from batch_pipeline.defs import reports
from batch_pipeline.defs.delivery import send_due_results
from batch_pipeline.defs.partitions import batch_partitions, batch_run_config
from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.defs.upload import TRANSIENT_OPENAI_RETRY
from batch_pipeline.stages.results import ingest_results
from batch_pipeline.stages.status import PollSettings, apply_status
from batch_pipeline.states import AT_OPENAI
from batch_pipeline.store import batches as store
from batch_pipeline.store import deliveries as delivery_store


def _store(
    context: dg.OpExecutionContext, postgres: PostgresParam, openai: OpenAIParam, settings: SettingsParam
) -> dg.Output[bool]:
    """Stores the batch's results; True when this run goes on to deliver them."""
    batch_id = int(context.partition_key)
    started = time.monotonic()
    # Marked before the results commit: the batch then becomes ready_to_deliver, and the delivery
    # sensor (ticking every second) would otherwise take it for a run of its own.
    with postgres.connect() as conn:
        reserved = delivery_store.reserve_delivery(conn, batch_id)
    try:
        summary = ingest_results(postgres.connect, openai.client(), batch_id, settings.openai_max_resubmits)
    except Exception as exc:
        if oai.is_transient(exc):
            raise  # the RetryPolicy backs off and tries again
        raise dg.Failure(f"batch {batch_id}: storing results failed: {exc}", allow_retries=False) from exc
    delivers = reserved and summary["outcome"] == "stored" and _begin_delivery(context, postgres, batch_id)
    if reserved and not delivers:  # resubmitted, or nothing stored: nothing for this run to send
        with postgres.connect() as conn:
            delivery_store.release_batch(conn, batch_id)
    context.log.info(f"batch {batch_id} results: {summary}; delivered by this run: {delivers}")
    if summary["outcome"] != "skipped":
        seconds = time.monotonic() - started
        reports.log(context, postgres, lambda c: reports.after_results(c, settings, batch_id, seconds))
    metadata = {k: str(v) for k, v in summary.items()} | {"delivered by this run": delivers}
    return dg.Output(delivers, metadata=metadata)


def _begin_delivery(context: dg.OpExecutionContext, postgres: PostgresParam, batch_id: int) -> bool:
    with postgres.connect() as conn:
        return delivery_store.begin_delivery(conn, batch_id, f"results run {context.run_id}") is not None


@dg.op(retry_policy=TRANSIENT_OPENAI_RETRY, tags={"kind": "openai"})
def store_results(
    context: dg.OpExecutionContext,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
) -> dg.Output[bool]:
    """Claims the batch first (``openai_completed`` → ``downloading``); a finished batch is skipped."""
    return _store(context, postgres, openai, settings)


@dg.op
def deliver_stored_results(
    context: dg.OpExecutionContext, proceed: bool, postgres: PostgresParam, settings: SettingsParam
) -> dict:
    """Sends the batch's results when this run took its delivery (as deliver_job's wave would)."""
    if not proceed:
        return {"batch_id": int(context.partition_key), "attempts": 0}
    return send_due_results(context, postgres, settings)


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("results"),
    description=(
        "Download the batch's output and error files, store every line on its request in one "
        "transaction, then deliver them in the same run (launched by status_sensor). Per state: "
        "openai_completed → stores the results (ready_to_deliver, or resubmitted when every line goes "
        "again) and sends them as deliver_job's first wave would; retries due later are the delivery "
        "sensor's; downloading (a run that died) → relaunched by the sensor once stale; any other "
        "state → nothing (logs 'skipped'). Stored results are never overwritten: to send them again "
        "use redeliver_job."
    ),
)
def results_job() -> None:
    deliver_stored_results(store_results())


@dg.op(retry_policy=TRANSIENT_OPENAI_RETRY, tags={"kind": "openai"})
def check_status_now(
    context: dg.OpExecutionContext, postgres: PostgresParam, openai: OpenAIParam, settings: SettingsParam
) -> str:
    """Ask OpenAI for the batch's status now and record it, as the status sensor would."""
    batch_id = int(context.partition_key)
    with postgres.connect() as conn:
        batch = store.get_batch(conn, batch_id)
    if batch is None or batch["state"] not in AT_OPENAI or not batch["openai_batch_id"]:
        state = batch["state"] if batch else "gone"
        context.log.info(f"batch {batch_id} is {state}: not at OpenAI, nothing to check")
        return "skipped"
    remote = openai.client().batches.retrieve(batch["openai_batch_id"])
    poll = PollSettings(settings.openai_poll_interval_seconds, settings.token_limit_backoff)
    with postgres.connect() as conn:
        outcome = apply_status(conn, batch_id, remote, poll)
        conn.commit()
    context.log.info(f"batch {batch_id}: OpenAI says {remote.status}; {outcome}")
    return str(outcome)


@dg.op(retry_policy=TRANSIENT_OPENAI_RETRY, tags={"kind": "openai"})
def store_results_if_done(
    context: dg.OpExecutionContext,
    status: str,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
) -> dg.Output[bool]:
    """Stores the results when the batch is (now) finished at OpenAI; else does nothing."""
    return _store(context, postgres, openai, settings)


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("results"),
    description=(
        "Check the batch at OpenAI now instead of at its next poll. Per state: openai_processing / "
        "cancelling → records OpenAI's status and counts; if OpenAI has finished it, stores and "
        "delivers its results in the same run (as results_job); openai_completed → the same; any "
        "other state → nothing. Safe in a backfill over any batches."
    ),
)
def refresh_status_job() -> None:
    deliver_stored_results(store_results_if_done(check_status_now()))
