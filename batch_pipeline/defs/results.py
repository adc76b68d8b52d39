"""The results job: one run per finished OpenAI batch stores its output and error lines; and
``refresh_status_job``, which checks one batch at OpenAI now (instead of at its next poll) and, when
OpenAI has finished it, stores its results in the same run.

After the stage, the op reports ``openai_batch`` and ``batch_results`` for its partition and the
accounting and input-line checks (``reports``)."""

import time

import dagster as dg

from batch_pipeline import openai_client as oai
from batch_pipeline.defs import reports
from batch_pipeline.defs.partitions import batch_partitions, batch_run_config
from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.defs.upload import TRANSIENT_OPENAI_RETRY
from batch_pipeline.stages.results import ingest_results
from batch_pipeline.stages.status import PollSettings, apply_status
from batch_pipeline.states import AT_OPENAI
from batch_pipeline.store import batches as store


def _store(
    context: dg.OpExecutionContext, postgres: PostgresParam, openai: OpenAIParam, settings: SettingsParam
) -> dg.Output[str]:
    batch_id = int(context.partition_key)
    started = time.monotonic()
    try:
        summary = ingest_results(postgres.connect, openai.client(), batch_id, settings.openai_max_resubmits)
    except Exception as exc:
        if oai.is_transient(exc):
            raise  # the RetryPolicy backs off and tries again
        raise dg.Failure(f"batch {batch_id}: storing results failed: {exc}", allow_retries=False) from exc
    context.log.info(f"batch {batch_id} results: {summary}")
    if summary["outcome"] != "skipped":
        seconds = time.monotonic() - started
        reports.log(context, postgres, lambda c: reports.after_results(c, settings, batch_id, seconds))
    return dg.Output(summary["outcome"], metadata={k: str(v) for k, v in summary.items()})


@dg.op(retry_policy=TRANSIENT_OPENAI_RETRY, tags={"kind": "openai"})
def store_results(
    context: dg.OpExecutionContext,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
) -> dg.Output[str]:
    """Claims the batch first (``openai_completed`` → ``downloading``); a finished batch is skipped."""
    return _store(context, postgres, openai, settings)


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("results"),
    description=(
        "Download the batch's output and error files and store every line on its request, in one "
        "transaction (launched by status_sensor). Per state: openai_completed → stores the results "
        "(ready_to_deliver, or resubmitted when every line goes again); downloading (a run that "
        "died) → relaunched by the sensor once stale; any other state → nothing (logs 'skipped'). "
        "Stored results are never overwritten: to send them again use redeliver_job."
    ),
)
def results_job() -> None:
    store_results()


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
) -> dg.Output[str]:
    """Stores the results when the batch is (now) finished at OpenAI; else does nothing."""
    return _store(context, postgres, openai, settings)


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("results"),
    description=(
        "Check the batch at OpenAI now instead of at its next poll. Per state: openai_processing / "
        "cancelling → records OpenAI's status and counts; if OpenAI has finished it, stores its "
        "results in the same run (as results_job); openai_completed → stores its results; any other "
        "state → nothing. Safe in a backfill over any batches."
    ),
)
def refresh_status_job() -> None:
    store_results_if_done(check_status_now())
