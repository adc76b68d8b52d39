"""``checks_job``: evaluate the asset checks of chosen batches now (one run per batch, or a backfill
over many), without running any stage.

An op job rather than the checks' own "Execute" button: an execution of partitioned checks alone (no
asset selected) cannot be given a partition in Dagster 1.13, so this job is the tested way to re-check
a batch by hand. Each evaluation is recorded on the batch's partition, as after a stage run.
"""

import dagster as dg

from batch_pipeline.defs import assets
from batch_pipeline.defs.partitions import batch_partitions, batch_run_config
from batch_pipeline.defs.resources import PostgresParam


@dg.op
def evaluate_checks(context: dg.OpExecutionContext, postgres: PostgresParam) -> int:
    """Log every check the batch's state makes decidable; returns how many failed."""
    batch_id = int(context.partition_key)
    with postgres.connect() as conn:
        results = [
            assets.input_lines(conn, batch_id),
            assets.accounting(conn, batch_id),
            assets.stuck(conn, batch_id, 0),
        ]
    failed = 0
    for result in results:
        if result is None:
            continue
        context.log_event(assets.as_evaluation(result, context.partition_key))
        failed += not result.passed
    return failed


@dg.job(
    partitions_def=batch_partitions,
    executor_def=dg.in_process_executor,
    config=batch_run_config("checks"),
    description=(
        "Evaluate the batch's asset checks now (read-only, safe in a backfill over any batches). Per "
        "state: before OpenAI reported its counts → only nothing_stuck_delivering; after OpenAI "
        "finished → input_lines_match_requests too; once results are stored → all three. A failed "
        "check is recorded on the batch's partition and reported by alert_sensor."
    ),
)
def checks_job() -> None:
    evaluate_checks()
