"""The batching sensor: open a batch for each full or stale (endpoint, model) group, admit batches
that waited for capacity, and hand each to an upload run (one per batch, keyed by its launch count).
The upload run fills its batch with the group's oldest requests (``store.batching.fill_batch``)."""

from collections.abc import Callable

import dagster as dg
import psycopg

from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import PipelineSettingsResource, PostgresResource
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.stages.capacity import admit_waiting
from batch_pipeline.store import batches as store
from batch_pipeline.store.batching import BatchLimits, due_reason, open_batch, queued_groups
from batch_pipeline.store.model_limits import fetch_overrides_sync

# Opening a batch is cheap (its upload run fills it); the cap only bounds a tick after a long pause.
MAX_OPENS_PER_TICK = 100
MAX_RUN_REQUESTS_PER_TICK = 100


def upload_run_request(batch_id: int, launch_count: int) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"upload:{batch_id}:{launch_count}",
        partition_key=str(batch_id),
        tags={"batch_id": str(batch_id), "stage": "upload"},
    )


def open_due_batches(
    conn: psycopg.Connection, pipeline: PipelineSettingsResource, limit_for: Callable[[str], int]
) -> list[int]:
    """Open a batch for every due group that has none open; its upload run fills it. Commits."""
    limits = BatchLimits(
        pipeline.batch_max_requests, pipeline.batch_max_bytes, pipeline.batch_max_age_seconds
    )
    opened: list[int] = []
    for group in queued_groups(conn, limits):
        reason = due_reason(group, limits, limit_for(group.model))
        if reason and len(opened) < MAX_OPENS_PER_TICK:
            batch_id = open_batch(conn, group.endpoint, group.model, reason)
            if batch_id is not None:
                opened.append(batch_id)
    conn.commit()
    return opened


def make_batching_sensor(upload_job: dg.JobDefinition, interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="batching_sensor",
        job=upload_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Cuts full or stale (endpoint, model) groups into batches and launches their uploads.",
    )
    def batching_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresResource, pipeline: PipelineSettingsResource
    ) -> dg.SensorResult:
        with postgres.connect() as conn:
            overrides = fetch_overrides_sync(conn)

            def limit_for(model: str) -> int:
                return token_limit_for(model, overrides)

            opened = open_due_batches(conn, pipeline, limit_for)
            admitted = admit_waiting(conn, limit_for)
            ready = conn.execute(store.READY_FOR_UPLOAD, (MAX_RUN_REQUESTS_PER_TICK,)).fetchall()
            stalled = store.relaunch_stalled(conn, ["uploading", "uploaded"])
        if stalled:
            context.log.warning("relaunching stalled uploads of batches %s", [r["id"] for r in stalled])
        if opened:
            context.log.info("opened batches %s", opened)
        launches = {r["id"]: r["launch_count"] for r in [*ready, *stalled]}
        launches.update(dict(admitted))
        keys = [str(batch_id) for batch_id in launches]
        return dg.SensorResult(
            run_requests=[upload_run_request(b, n) for b, n in launches.items()],
            dynamic_partitions_requests=[batch_partitions.build_add_request(keys)] if keys else [],
        )

    return batching_sensor
