"""The batching sensor: cut full or stale (endpoint, model) groups into batches, admit batches that
waited for capacity, and hand each to an upload run (one per batch, keyed by its launch count)."""

from collections.abc import Callable

import dagster as dg
import psycopg

from batch_pipeline.capacity import admit_waiting
from batch_pipeline.defs.partitions import batch_partitions
from batch_pipeline.defs.resources import PipelineSettingsResource, PostgresResource
from batch_pipeline.model_limits import token_limit_for
from batch_pipeline.store import batches as store
from batch_pipeline.store.batching import BatchLimits, cut_batch, due_reason, queued_groups
from batch_pipeline.store.model_limits import fetch_overrides_sync

# Cutting a 50,000-request batch takes about a second; a few per tick keep the tick far from the
# 60 s sensor deadline, and the next tick continues.
MAX_CUTS_PER_TICK = 4
MAX_RUN_REQUESTS_PER_TICK = 100


def upload_run_request(batch_id: int, launch_count: int) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"upload:{batch_id}:{launch_count}",
        partition_key=str(batch_id),
        tags={"batch_id": str(batch_id), "stage": "upload"},
    )


def cut_due_batches(
    conn: psycopg.Connection, pipeline: PipelineSettingsResource, limit_for: Callable[[str], int]
) -> list[int]:
    """Cut one batch from every due group; repeat (a full group may hold several) up to the cap."""
    limits = BatchLimits(
        pipeline.batch_max_requests, pipeline.batch_max_bytes, pipeline.batch_max_age_seconds
    )
    cut: list[int] = []
    while len(cut) < MAX_CUTS_PER_TICK:
        due = [
            (g, r) for g in queued_groups(conn, limits) if (r := due_reason(g, limits, limit_for(g.model)))
        ]
        if not due:
            break
        before = len(cut)
        for group, reason in due[: MAX_CUTS_PER_TICK - len(cut)]:
            row = cut_batch(conn, group.endpoint, group.model, limits, limit_for(group.model), reason)
            if row is not None:
                cut.append(row["id"])
        if len(cut) == before:
            # Nothing fitted: the oldest request alone exceeds a limit lowered after it was accepted.
            # It stays queued (visible in the API) until the limit is raised again.
            break
    return cut


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

            cut = cut_due_batches(conn, pipeline, limit_for)
            admitted = admit_waiting(conn, limit_for)
            ready = conn.execute(store.READY_FOR_UPLOAD, (MAX_RUN_REQUESTS_PER_TICK,)).fetchall()
            stalled = conn.execute(
                store.RELAUNCH_STALLED,
                {"states": ["uploading", "uploaded"], "after": store.STALLED_AFTER_SECONDS, "limit": 20},
            ).fetchall()
            conn.commit()
        if stalled:
            context.log.warning("relaunching stalled uploads of batches %s", [r["id"] for r in stalled])
        if cut:
            context.log.info("cut batches %s", cut)
        launches = {r["id"]: r["launch_count"] for r in [*ready, *stalled]}
        launches.update(dict(admitted))
        keys = [str(batch_id) for batch_id in launches]
        return dg.SensorResult(
            run_requests=[upload_run_request(b, n) for b, n in launches.items()],
            dynamic_partitions_requests=[batch_partitions.build_add_request(keys)] if keys else [],
        )

    return batching_sensor
