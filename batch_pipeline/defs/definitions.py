"""The Dagster code location: everything assembled in one ``Definitions``.

``dagster`` loads ``defs`` from this module (see ``workspace.yaml``); tests call ``build_definitions``
with their own settings and database.
"""

from __future__ import annotations

import dagster as dg

from batch_pipeline.config import Settings, get_settings
from batch_pipeline.defs.alerts import make_alert_sensor
from batch_pipeline.defs.assets import ASSET_CHECKS, ASSET_SPECS
from batch_pipeline.defs.batching import make_batching_sensor
from batch_pipeline.defs.checks import checks_job
from batch_pipeline.defs.cleanup import cleanup_job, cleanup_schedule
from batch_pipeline.defs.delivery import deliver_job, make_delivery_sensor, redeliver_job
from batch_pipeline.defs.resources import build_resources
from batch_pipeline.defs.results import refresh_status_job, results_job
from batch_pipeline.defs.search_index import make_search_index_sensor
from batch_pipeline.defs.status import make_status_sensor
from batch_pipeline.defs.upload import restart_job, upload_job
from batch_pipeline.observability.logs import configure_logging
from batch_pipeline.store.openai_calls import record_openai_calls


def build_definitions(settings: Settings, dsn: str | None = None) -> dg.Definitions:
    # The status sensor ticks at the finer of the two intervals; each batch is still polled only
    # every OPENAI_POLL_INTERVAL_SECONDS (its next_check_at).
    status_interval = min(settings.sensor_interval_seconds, settings.openai_poll_interval_seconds)
    return dg.Definitions(
        assets=ASSET_SPECS,
        asset_checks=ASSET_CHECKS,
        jobs=[
            upload_job,
            results_job,
            deliver_job,
            redeliver_job,
            refresh_status_job,
            restart_job,
            checks_job,
            cleanup_job,
        ],
        sensors=[
            make_batching_sensor(upload_job, settings.sensor_interval_seconds),
            make_status_sensor(results_job, status_interval),
            make_delivery_sensor(deliver_job, settings.sensor_interval_seconds),
            make_alert_sensor(settings.sensor_interval_seconds),
            make_search_index_sensor(settings.sensor_interval_seconds),
        ],
        schedules=[cleanup_schedule],
        resources=build_resources(settings, dsn),
        executor=dg.in_process_executor,
    )


# The code server and every run worker load this module: their lines in LOG_FORMAT (Dagster's own
# included), their OpenAI calls written for /metrics.
_settings = get_settings()
configure_logging(_settings)
record_openai_calls(_settings.database_url)
defs = build_definitions(_settings)
