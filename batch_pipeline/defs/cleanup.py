"""The cleanup job and its hourly schedule: OpenAI files, retention, and the batches' partitions."""

import dagster as dg

from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import OpenAIParam, PostgresParam, SettingsParam
from batch_pipeline.stages.cleanup import (
    Connect,
    delete_expired,
    delete_old_webhook_events,
    delete_openai_files,
    orphan_keys,
)

# Keys looked up in the app database per query, and partitions deleted per run at most (Dagster
# deletes them one by one; a backlog, e.g. after a mass delete, drains over a few runs).
PARTITION_CHUNK = 1000
MAX_PARTITION_DELETES = 10_000


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
    # Keep the partition list (the UI's list of batches) as long as the data, not longer.
    removed = remove_orphan_partitions(context.instance, postgres.connect)
    context.log.info("deleted %s partitions of batches that no longer exist", removed)


@dg.job(executor_def=dg.in_process_executor, description="Delete OpenAI files and data past retention.")
def cleanup_job() -> None:
    clean_up()


cleanup_schedule = dg.ScheduleDefinition(
    job=cleanup_job, cron_schedule="17 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
