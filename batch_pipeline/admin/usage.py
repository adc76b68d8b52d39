"""Cost and savings: the tokens OpenAI reported, priced at batch rates and at synchronous rates.

Prices come from ``batch_pipeline.pricing`` (the shipped table, or ``MODEL_PRICES_FILE``). Tokens of a
model the table does not price are counted but not costed; ``unpriced_requests`` says how many requests
that leaves out of the USD figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from batch_pipeline.config import get_settings
from batch_pipeline.pricing import PriceTable, cost, load_prices
from batch_pipeline.store import usage as store

GROUP_BY = tuple(store.GROUP_KEYS)
TOKEN_FIELDS = ("input_tokens", "cached_tokens", "output_tokens")
USD_DIGITS = 6


def _prices(prices: PriceTable | None) -> PriceTable:
    return prices if prices is not None else load_prices(get_settings().model_prices_file)


def _empty(key: str | None) -> dict[str, Any]:
    return {
        "key": key,
        "batches": 0,
        "requests": 0,
        **dict.fromkeys(TOKEN_FIELDS, 0),
        "batch_cost_usd": 0.0,
        "sync_cost_usd": 0.0,
        "savings_usd": 0.0,
        "unpriced_requests": 0,
    }


def _fold(rows: Iterable[dict[str, Any]], table: PriceTable, into: dict[str, Any]) -> None:
    """Add (key, model) groups to ``into``, priced per model."""
    for row in rows:
        tokens = {f: int(row[f] or 0) for f in TOKEN_FIELDS}
        into["batches"] += int(row["batches"])
        into["requests"] += int(row["requests"] or 0)
        for f in TOKEN_FIELDS:
            into[f] += tokens[f]
        prices = table.for_model(row["model"])
        if prices is None:
            into["unpriced_requests"] += int(row["requests"] or 0)
            continue
        c = cost(prices, tokens["input_tokens"], tokens["cached_tokens"], tokens["output_tokens"])
        into["batch_cost_usd"] += c.batch_usd
        into["sync_cost_usd"] += c.sync_usd
    into["savings_usd"] = into["sync_cost_usd"] - into["batch_cost_usd"]
    for f in ("batch_cost_usd", "sync_cost_usd", "savings_usd"):
        into[f] = round(into[f], USD_DIGITS)


async def usage(
    conn: psycopg.AsyncConnection, group_by: str, prices: PriceTable | None = None
) -> list[dict[str, Any]]:
    """One row per key (a model, a UTC day 'YYYY-MM-DD' or an endpoint), ordered by key: key, batches,
    requests, input/cached/output tokens, batch_cost_usd, sync_cost_usd, savings_usd, unpriced_requests.
    ValueError for another ``group_by``."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
    table = _prices(prices)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for row in await store.usage_groups(conn, group_by):
        by_key.setdefault(row["key"], []).append(row)
    out = []
    for key, rows in by_key.items():
        figures = _empty(key)
        _fold(rows, table, figures)
        out.append(figures)
    return out


async def totals(conn: psycopg.AsyncConnection, prices: PriceTable | None = None) -> dict[str, Any]:
    """All-time figures (as one ``usage`` row, key None) and the date the prices were taken on."""
    table = _prices(prices)
    figures = _empty(None)
    _fold(await store.usage_groups(conn, "model"), table, figures)
    return {**figures, "prices_taken_on": table.taken_on}


async def batch_cost(
    conn: psycopg.AsyncConnection, batch_id: int, prices: PriceTable | None = None
) -> dict[str, Any] | None:
    """One batch's estimated and reported tokens and their cost; None when there is no such batch.
    The USD figures are None until OpenAI reported usage, or when the model is not priced."""
    row = await store.batch_usage(conn, batch_id)
    if row is None:
        return None
    table = _prices(prices)
    out: dict[str, Any] = {
        "batch_id": row["id"],
        "model": row["model"],
        "estimated_tokens": row["estimated_tokens"],
        "reported": row["input_tokens"] is not None,
        "requests": row["openai_completed"],
        "input_tokens": row["input_tokens"],
        "cached_tokens": row["cached_tokens"],
        "output_tokens": row["output_tokens"],
        "reasoning_tokens": row["reasoning_tokens"],
        "batch_cost_usd": None,
        "sync_cost_usd": None,
        "savings_usd": None,
        "priced": False,
        "prices_taken_on": table.taken_on,
    }
    prices_for = table.for_model(row["model"])
    out["priced"] = prices_for is not None
    if prices_for is not None and row["input_tokens"] is not None:
        c = cost(prices_for, row["input_tokens"], row["cached_tokens"] or 0, row["output_tokens"] or 0)
        out["batch_cost_usd"] = round(c.batch_usd, USD_DIGITS)
        out["sync_cost_usd"] = round(c.sync_usd, USD_DIGITS)
        out["savings_usd"] = round(c.savings_usd, USD_DIGITS)
    return out
