"""The cleanup job and its hourly schedule: OpenAI files, retention, and the batches' partitions."""

import dagster as dg

from batch_pipeline.cleanup import delete_expired, delete_openai_files
from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import OpenAIResource, PipelineSettingsResource, PostgresResource


@dg.op
def clean_up(
    context: dg.OpExecutionContext,
    postgres: PostgresResource,
    openai: OpenAIResource,
    pipeline: PipelineSettingsResource,
) -> None:
    if pipeline.openai_delete_files:
        deleted = delete_openai_files(postgres.connect, openai.client())
        context.log.info("deleted the OpenAI files of %s batches", deleted)
    expired = delete_expired(postgres.connect, pipeline.retention_days)
    # Keep the partition list (the UI's list of batches) as long as the data, not longer.
    existing = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    for batch_id in expired:
        if str(batch_id) in existing:
            context.instance.delete_dynamic_partition(batch_partitions.name, str(batch_id))
    context.log.info("deleted %s batches past %s days of retention", len(expired), pipeline.retention_days)


@dg.job(executor_def=dg.in_process_executor, description="Delete OpenAI files and data past retention.")
def cleanup_job() -> None:
    clean_up()


cleanup_schedule = dg.ScheduleDefinition(
    job=cleanup_job, cron_schedule="17 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
