"""The results job: one run per finished OpenAI batch stores its output and error lines."""

import dagster as dg

from batch_pipeline import openai_client as oai
from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.defs.upload import TRANSIENT_OPENAI_RETRY
from batch_pipeline.stages.results import ingest_results


@dg.op(retry_policy=TRANSIENT_OPENAI_RETRY, tags={"kind": "openai"})
def store_results(
    context: dg.OpExecutionContext,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
) -> dg.Output[str]:
    """Claims the batch first (``openai_completed`` → ``downloading``); a finished batch is skipped."""
    batch_id = int(context.partition_key)
    try:
        summary = ingest_results(postgres.connect, openai.client(), batch_id, settings.openai_max_resubmits)
    except Exception as exc:
        if oai.is_transient(exc):
            raise  # the RetryPolicy backs off and tries again
        raise dg.Failure(f"batch {batch_id}: storing results failed: {exc}", allow_retries=False) from exc
    context.log.info("batch %s results: %s", batch_id, summary)
    return dg.Output(summary["outcome"], metadata={k: str(v) for k, v in summary.items()})


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    tags={"stage": "results"},
    description="Download the output and error files and store every result line.",
)
def results_job() -> None:
    store_results()
