"""Model prices, as data: what a batch cost at batch rates and what the same tokens cost synchronously.

The table ships as ``batch_pipeline/prices.json`` (USD per 1M tokens, sync and batch tiers, with the
date the figures were taken from OpenAI's price list); ``MODEL_PRICES_FILE`` points to a file of the same
shape to replace it. A model is priced by the longest key it starts with, so dated snapshots
(``gpt-4o-mini-2024-07-18``) find their family. OpenAI's ``input_tokens`` include the cached ones, which
are billed at the cached rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PER_TOKENS = 1_000_000


class Rates(BaseModel):
    """USD per 1M tokens."""

    model_config = ConfigDict(frozen=True)
    input: float = Field(ge=0)
    cached_input: float = Field(ge=0)
    output: float = Field(ge=0)


class ModelPrices(BaseModel):
    model_config = ConfigDict(frozen=True)
    sync: Rates
    batch: Rates


class PriceTable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    taken_on: str = Field(min_length=1, description="When the figures were taken from OpenAI's price list.")
    source: str = ""
    models: dict[str, ModelPrices]

    def for_model(self, model: str) -> ModelPrices | None:
        """The prices of the longest key ``model`` starts with, or None (not priced)."""
        best = max((key for key in self.models if model.startswith(key)), key=len, default=None)
        return self.models[best] if best is not None else None


class PriceTableError(ValueError):
    pass


@dataclass(frozen=True)
class Cost:
    batch_usd: float
    sync_usd: float

    @property
    def savings_usd(self) -> float:
        return self.sync_usd - self.batch_usd


def price(rates: Rates, input_tokens: int, cached_tokens: int, output_tokens: int) -> float:
    """USD for these tokens at these rates; cached tokens are part of ``input_tokens``."""
    cached = min(cached_tokens, input_tokens)
    return (
        (input_tokens - cached) * rates.input + cached * rates.cached_input + output_tokens * rates.output
    ) / PER_TOKENS


def cost(prices: ModelPrices, input_tokens: int, cached_tokens: int, output_tokens: int) -> Cost:
    return Cost(
        batch_usd=price(prices.batch, input_tokens, cached_tokens, output_tokens),
        sync_usd=price(prices.sync, input_tokens, cached_tokens, output_tokens),
    )


@lru_cache(maxsize=4)
def load_prices(path: Path | None = None) -> PriceTable:
    """The shipped table, or the file at ``path``; PriceTableError names what is wrong with it."""
    try:
        if path is None:
            text = resources.files("batch_pipeline").joinpath("prices.json").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        return PriceTable.model_validate(json.loads(text))
    except (OSError, ValueError, ValidationError) as exc:
        where = path or "the shipped prices.json"
        raise PriceTableError(f"MODEL_PRICES_FILE: cannot use {where}: {exc}") from None
