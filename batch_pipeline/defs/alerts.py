"""The alert sensor: failed asset checks, failed runs and batches that went ``failed`` are written to
the batch's history (a ``batch_transitions`` row whose state does not change, reason ``alert: …``)
and POSTed to ``ALERT_WEBHOOK_URL`` when set, signed with ``WEBHOOK_SIGNING_SECRET`` like deliveries.

The cursor (JSON) holds how far each source was read: the check executions' ids, the last failed
run's update time, the last transition id. A first tick starts at "now" (no flood of old alerts). The
history row is the durable record; the webhook is one best-effort POST per alert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import httpx
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from batch_pipeline.config import Settings
from batch_pipeline.defs import assets
from batch_pipeline.defs.resources import PostgresParam, SettingsParam
from batch_pipeline.delivery.signing import Signer
from batch_pipeline.store import checks as store

CHECK_KEYS = [
    dg.AssetCheckKey(assets.ASSET_BATCH_RESULTS, assets.ACCOUNTED),
    dg.AssetCheckKey(assets.ASSET_BATCH_DELIVERIES, assets.NOT_STUCK),
    dg.AssetCheckKey(assets.ASSET_BATCH_INPUT, assets.INPUT_LINES),
]
_STATES_THAT_ALERT = ["failed"]
PER_TICK = 100
_ALERT_POST_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Alert:
    kind: str  # check_failed | run_failed | batch_failed
    key: str  # unique per alert: the webhook-id receivers dedupe on
    batch_id: int | None
    message: str

    def body(self) -> bytes:
        return json.dumps(
            {"type": "alert", "kind": self.kind, "batch_id": self.batch_id, "message": self.message}
        ).encode()


def send(settings: Settings, alert: Alert) -> None:
    """One signed POST; a failure is logged by the caller, never retried (the history row stays)."""
    body = alert.body()
    headers = {"content-type": "application/json"}
    if settings.webhook_signing_secret is not None:
        signer = Signer(settings.webhook_signing_secret.get_secret_value())
        headers.update(signer.headers(f"alert:{alert.key}", body))
    httpx.post(
        settings.alert_webhook_url, content=body, headers=headers, timeout=_ALERT_POST_TIMEOUT_SECONDS
    ).raise_for_status()


def _failed_checks(instance: dg.DagsterInstance, cursor: dict[str, Any]) -> list[Alert]:
    alerts = []
    for key in CHECK_KEYS:
        name = key.name
        records = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=PER_TICK, status={AssetCheckExecutionRecordStatus.FAILED}
        )
        seen = cursor.get(name)
        cursor[name] = max([seen or 0, *(r.id for r in records)])
        if seen is None:
            continue  # the first tick only sets the mark
        for record in records:
            if record.id <= seen:
                continue
            evaluation = record.event.asset_check_evaluation if record.event else None
            why = (evaluation.description if evaluation else None) or f"{name} failed"
            batch = int(record.partition) if record.partition else None
            alerts.append(Alert("check_failed", f"check:{record.id}", batch, f"check {name} failed: {why}"))
    return alerts


def _failed_runs(instance: dg.DagsterInstance, cursor: dict[str, Any]) -> list[Alert]:
    after = cursor.get("runs_after")
    if after is None:
        cursor["runs_after"] = datetime.now(UTC).isoformat()
        return []
    filters = dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.FAILURE], updated_after=datetime.fromisoformat(after)
    )
    records = instance.get_run_records(filters=filters, limit=PER_TICK, ascending=True)
    alerts = []
    for record in records:
        run = record.dagster_run
        cursor["runs_after"] = max(cursor["runs_after"], record.update_timestamp.isoformat())
        batch = run.tags.get("batch_id")
        message = f"run {run.run_id} of {run.job_name} failed"
        alerts.append(Alert("run_failed", f"run:{run.run_id}", int(batch) if batch else None, message))
    return alerts


def _failed_batches(conn, cursor: dict[str, Any]) -> list[Alert]:
    after = cursor.get("transition")
    if after is None:
        cursor["transition"] = store.last_transition_id(conn)
        return []
    alerts = []
    for row in store.alerting_transitions(conn, after, _STATES_THAT_ALERT, PER_TICK):
        cursor["transition"] = row["id"]
        message = f"batch went {row['to_state']} (from {row['from_state']}): {row['reason']}"
        alerts.append(Alert("batch_failed", f"transition:{row['id']}", row["batch_id"], message))
    return alerts


def make_alert_sensor(interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="alert_sensor",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reports failed asset checks, failed runs and batches that went failed: to the batch's "
            "transitions and to ALERT_WEBHOOK_URL."
        ),
    )
    def alert_sensor(
        context: dg.SensorEvaluationContext, postgres: PostgresParam, settings: SettingsParam
    ) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        alerts = _failed_checks(context.instance, cursor) + _failed_runs(context.instance, cursor)
        with postgres.connect() as conn:
            alerts += _failed_batches(conn, cursor)
            for alert in alerts:
                if alert.batch_id is not None and alert.kind != "batch_failed":
                    store.record_alert(conn, alert.batch_id, f"alert: {alert.message}")
            conn.commit()
        for alert in alerts:
            context.log.error(f"alert for batch {alert.batch_id}: {alert.message}")
            if settings.alert_webhook_url:
                try:
                    send(settings, alert)
                except httpx.HTTPError as exc:
                    context.log.warning(f"alert webhook failed: {exc}")
        return dg.SensorResult(
            cursor=json.dumps(cursor),
            skip_reason=f"{len(alerts)} alerts reported" if alerts else "nothing to report",
        )

    return alert_sensor
