"""The cleanup job and its hourly schedule: OpenAI files, retention, the batches' partitions, and
Dagster's own finished runs."""

import contextlib
from datetime import UTC, datetime, timedelta

import dagster as dg

from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.stages.cleanup import (
    Connect,
    delete_expired,
    delete_old_openai_calls,
    delete_old_webhook_events,
    delete_openai_files,
    orphan_keys,
)

# Keys looked up in the app database per query, and partitions deleted per run at most (Dagster
# deletes them one by one; a backlog, e.g. after a mass delete, drains over a few runs).
PARTITION_CHUNK = 1000
MAX_PARTITION_DELETES = 10_000
# Dagster runs looked up per query and deleted per cleanup run at most (a backlog drains over runs).
RUN_CHUNK = 100
MAX_RUN_DELETES = 2000
# Never queued, starting or in progress ones: only runs that are over.
FINISHED_RUNS = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def remove_orphan_partitions(
    instance: dg.DagsterInstance,
    connect: Connect,
    chunk: int = PARTITION_CHUNK,
    limit: int = MAX_PARTITION_DELETES,
) -> int:
    """Delete every ``batches`` partition whose batch row is gone; returns how many.

    A reconciliation rather than "the ids this run deleted": batches also go through
    DELETE /api/batches/{id}, and a run may crash between its SQL delete and the partition delete.
    Safe against new batches: their rows are committed before the sensors add their partitions.
    """
    keys = list(instance.get_dynamic_partitions(batch_partitions.name))
    removed = 0
    for start in range(0, len(keys), chunk):
        for key in orphan_keys(connect, keys[start : start + chunk]):
            if removed >= limit:
                return removed
            instance.delete_dynamic_partition(batch_partitions.name, key)
            removed += 1
    return removed


def delete_old_runs(
    instance: dg.DagsterInstance,
    retention_days: int,
    now: datetime | None = None,
    keep: str | None = None,
    chunk: int = RUN_CHUNK,
    limit: int = MAX_RUN_DELETES,
) -> int:
    """Delete the Dagster runs that finished more than ``retention_days`` before ``now`` (default:
    the clock), with their event logs and compute logs, never run ``keep``; returns how many.

    A finished run's last update is its end, so ``updated_before`` is "ended before" (the storage
    compares it as naive UTC, hence the conversion)."""
    before = (now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=retention_days)
    runs_filter = dg.RunsFilter(statuses=FINISHED_RUNS, updated_before=before)
    deleted = 0
    while deleted < limit:
        records = instance.get_run_records(filters=runs_filter, limit=min(chunk, limit - deleted))
        run_ids = [r.dagster_run.run_id for r in records if r.dagster_run.run_id != keep]
        if not run_ids:
            return deleted
        for run_id in run_ids:
            instance.delete_run(run_id)  # the run and its event log
            # Compute log keys are [run_id, "compute_logs", file_key]. Every manager of 1.13 has
            # delete_logs (the no-op one does nothing); a third-party one that cannot delete is
            # skipped quietly: its logs are left to its own storage's lifecycle.
            with contextlib.suppress(NotImplementedError):
                instance.compute_log_manager.delete_logs(prefix=[run_id])
        deleted += len(run_ids)
    return deleted


@dg.op
def clean_up(
    context: dg.OpExecutionContext,
    postgres: PostgresParam,
    openai: OpenAIParam,
    settings: SettingsParam,
) -> None:
    client = openai.client() if settings.openai_delete_files else None
    if client is not None:
        deleted = delete_openai_files(postgres.connect, client)
        context.log.info("deleted the OpenAI files of %s batches", deleted)
    # With file deletion on, retention deletes any files still left before the row (none orphaned).
    expired = delete_expired(postgres.connect, settings.retention_days, client)
    context.log.info("deleted %s batches past %s days of retention", len(expired), settings.retention_days)
    delete_old_webhook_events(postgres.connect)
    calls = delete_old_openai_calls(postgres.connect)
    context.log.info("deleted %s rows of OpenAI call figures older than 7 days", calls)
    # Keep the partition list (the UI's list of batches) as long as the data, not longer.
    removed = remove_orphan_partitions(context.instance, postgres.connect)
    context.log.info("deleted %s partitions of batches that no longer exist", removed)
    days = settings.dagster_run_retention_days
    runs = delete_old_runs(context.instance, days, keep=context.run_id)
    context.log.info("deleted %s Dagster runs finished more than %s days ago", runs, days)


@dg.job(
    executor_def=dg.in_process_executor,
    description="Delete OpenAI files, and the data and Dagster runs past retention.",
)
def cleanup_job() -> None:
    clean_up()


cleanup_schedule = dg.ScheduleDefinition(
    job=cleanup_job, cron_schedule="17 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
