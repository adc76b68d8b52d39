"""Cost and savings: reported tokens priced at batch and sync rates, per model, day and endpoint."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from batch_pipeline.admin import usage
from batch_pipeline.pricing import PriceTableError, cost, load_prices
from tests.batch_pipeline.admin.helpers import add_batch, run
from tests.intake_api.conftest import execute, serve

CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"


def reported(db_url: str, model: str, endpoint: str, state: str = "delivered", **cols: object) -> int:
    batch_id = add_batch(db_url, state, **cols)
    execute(
        db_url,
        "UPDATE batchman.batches SET model = %s, endpoint = %s WHERE id = %s",
        (model, endpoint, batch_id),
    )
    return batch_id


def seed(db_url: str) -> dict[str, int]:
    """Batches as the status stage leaves them once OpenAI reported their usage (and one it did not)."""
    day1, day2 = datetime(2026, 11, 30, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 1, tzinfo=UTC)
    return {
        "mini": reported(db_url, "gpt-4o-mini", CHAT, openai_completed=10, estimated_tokens=900_000,
                         input_tokens=1_000_000, cached_tokens=200_000, output_tokens=500_000,
                         reasoning_tokens=0, completed_at=day1),
        "4o": reported(db_url, "gpt-4o-2024-08-06", RESPONSES, openai_completed=8, input_tokens=2_000_000,
                       cached_tokens=0, output_tokens=100_000, completed_at=day2),
        "own": reported(db_url, "my-finetune", RESPONSES, openai_completed=3, input_tokens=1_000,
                        cached_tokens=0, output_tokens=1_000, completed_at=day2),
        "unreported": reported(db_url, "gpt-4o-mini", CHAT, "openai_processing", openai_completed=5),
    }  # fmt: skip


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


def test_pricing_bills_cached_tokens_at_the_cached_rate_and_finds_model_families() -> None:
    table = load_prices()
    assert table.taken_on
    mini = table.for_model("gpt-4o-mini-2024-07-18")
    assert mini is table.for_model("gpt-4o-mini") and mini is not table.for_model("gpt-4o")
    assert table.for_model("my-finetune") is None
    c = cost(mini, 1_000_000, 200_000, 500_000)
    assert (c.sync_usd, c.batch_usd) == pytest.approx((0.435, 0.2175))
    for name, prices in table.models.items():  # the shipped table: batch is half of sync
        for field in ("input", "cached_input", "output"):
            assert getattr(prices.batch, field) == pytest.approx(getattr(prices.sync, field) / 2), name


def test_a_bad_price_file_is_refused_with_its_name(tmp_path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"taken_on": "x", "models": {"m": {"sync": {"input": -1}}}}))
    with pytest.raises(PriceTableError, match=r"prices\.json"):
        load_prices(bad)


def test_usage_per_model_endpoint_and_day_and_totals(db_url) -> None:
    seed(db_url)
    models = by_key(run(db_url, lambda c: usage.usage(c, "model")))
    assert set(models) == {"gpt-4o-mini", "gpt-4o-2024-08-06", "my-finetune"}  # unreported left out
    mini = models["gpt-4o-mini"]
    assert (mini["batches"], mini["requests"], mini["input_tokens"], mini["cached_tokens"]) == (
        1, 10, 1_000_000, 200_000,
    )  # fmt: skip
    assert (mini["batch_cost_usd"], mini["sync_cost_usd"], mini["savings_usd"]) == pytest.approx(
        (0.2175, 0.435, 0.2175)
    )
    own = models["my-finetune"]
    assert (own["batch_cost_usd"], own["unpriced_requests"], own["output_tokens"]) == (0.0, 3, 1_000)

    endpoints = by_key(run(db_url, lambda c: usage.usage(c, "endpoint")))
    responses = endpoints[RESPONSES]
    assert (responses["requests"], responses["input_tokens"], responses["unpriced_requests"]) == (
        11, 2_001_000, 3,
    )  # fmt: skip
    assert (responses["batch_cost_usd"], responses["sync_cost_usd"]) == pytest.approx((3.0, 6.0))

    # UTC days whatever the session's time zone (5 hours behind UTC, both batches end on Nov 30).
    db_name = db_url.rsplit("/", 1)[1]
    execute(db_url, f"ALTER DATABASE \"{db_name}\" SET timezone = 'America/New_York'")
    days = by_key(run(db_url, lambda c: usage.usage(c, "day")))
    assert list(days) == ["2026-11-30", "2026-12-01"]  # UTC days, in order
    assert days["2026-12-01"]["savings_usd"] == pytest.approx(3.0)

    totals = run(db_url, usage.totals)
    assert (totals["requests"], totals["unpriced_requests"], totals["batches"]) == (21, 3, 3)
    assert (totals["batch_cost_usd"], totals["sync_cost_usd"], totals["savings_usd"]) == pytest.approx(
        (3.2175, 6.435, 3.2175)
    )
    assert totals["prices_taken_on"] == load_prices().taken_on
    with pytest.raises(ValueError, match="group_by"):
        run(db_url, lambda c: usage.usage(c, "week"))


def test_batch_cost_compares_estimate_and_report(db_url) -> None:
    ids = seed(db_url)
    mini = run(db_url, lambda c: usage.batch_cost(c, ids["mini"]))
    assert (mini["estimated_tokens"], mini["input_tokens"], mini["reported"], mini["priced"]) == (
        900_000, 1_000_000, True, True,
    )  # fmt: skip
    assert mini["savings_usd"] == pytest.approx(0.2175)
    pending = run(db_url, lambda c: usage.batch_cost(c, ids["unreported"]))
    assert (pending["reported"], pending["batch_cost_usd"], pending["priced"]) == (False, None, True)
    own = run(db_url, lambda c: usage.batch_cost(c, ids["own"]))
    assert (own["priced"], own["sync_cost_usd"]) == (False, None)
    assert run(db_url, lambda c: usage.batch_cost(c, 10**9)) is None


def test_usage_and_batch_detail_over_http_with_an_overriding_price_file(tmp_path, db_url) -> None:
    ids = seed(db_url)
    prices = tmp_path / "my-prices.json"
    rates = {"input": 1.0, "cached_input": 1.0, "output": 1.0}
    prices.write_text(json.dumps({
        "taken_on": "2026-01-01",
        "models": {"my-finetune": {"sync": rates, "batch": {k: v / 2 for k, v in rates.items()}}},
    }))  # fmt: skip
    with serve(tmp_path, db_url, model_prices_file=prices) as client:
        report = client.get("/api/usage", params={"group_by": "model"}).json()
        assert report["prices_taken_on"] == "2026-01-01" and report["group_by"] == "model"
        rows = by_key(report["data"])
        assert (rows["my-finetune"]["sync_cost_usd"], rows["my-finetune"]["batch_cost_usd"]) == (0.002, 0.001)
        assert rows["gpt-4o-mini"]["unpriced_requests"] == 10  # not in this table
        assert client.get("/api/usage").json()["group_by"] == "model"  # the default
        bad = client.get("/api/usage", params={"group_by": "week"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["code"] == "validation_error"
        detail = client.get(f"/api/batches/{ids['own']}").json()
        assert detail["cost"]["savings_usd"] == 0.001 and detail["cost"]["prices_taken_on"] == "2026-01-01"
    with serve(tmp_path, db_url) as client:  # the shipped table
        detail = client.get(f"/api/batches/{ids['mini']}").json()
        assert detail["cost"]["batch_cost_usd"] == pytest.approx(0.2175)
        assert detail["cost"]["estimated_tokens"] == 900_000
