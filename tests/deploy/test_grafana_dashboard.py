"""deploy/grafana/batchman-dashboard.json asks only for metrics ``/metrics`` exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.intake_api.conftest import serve
from tests.intake_api.test_metrics import families, seed_pipeline

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "batchman-dashboard.json"
METRIC = re.compile(r"\bbatchman_[a-z_]+\b")


def exported_names(text: str) -> set[str]:
    """Every series name a scrape can hold: histograms add _bucket, _sum and _count to their family."""
    names = set()
    for name, kind in families(text).items():
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_expression_names_exported_metrics(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batch_pipeline.admin import metrics as admin_metrics

    monkeypatch.setattr(admin_metrics, "SETTLE_SECONDS", 0.0)
    seed_pipeline(db_url)  # rows of every kind, so that every family has samples
    with serve(tmp_path, db_url) as c:
        exported = exported_names(c.get("/metrics").text)
    exprs = dashboard_exprs()
    assert exprs
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert used, f"no batchman metric in {expr!r}"
        assert used <= exported, f"{expr!r} asks for {used - exported}, not exported"


def test_the_dashboard_covers_each_family() -> None:
    """A metric added to /metrics without a panel is likely forgotten: the list below is the README's."""
    used = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    for family in (
        "batchman_intake_requests_total",
        "batchman_queue_depth",
        "batchman_queue_oldest_age_seconds",
        "batchman_batches",
        "batchman_batch_transitions_total",
        "batchman_deliveries_total",
        "batchman_delivery_duration_seconds_bucket",
        "batchman_delivery_backlog",
        "batchman_result_lines_stored_total",
        "batchman_openai_tokens_total",
        "batchman_openai_cost_usd_total",
        "batchman_intake_paused",
        "batchman_openai_call_seconds_count",
        "batchman_openai_call_seconds_bucket",
    ):
        assert family in used, family
