"""``/api/usage``: the tokens OpenAI reported, priced at batch and synchronous rates, grouped."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from batch_pipeline.admin import usage as admin
from batch_pipeline.pricing import load_prices
from intake_api.deps import ConnDep, SettingsDep, require_token
from intake_api.schemas import errors_doc

router = APIRouter(prefix="/api/usage", tags=["usage"], dependencies=[Depends(require_token)])


class UsageRow(BaseModel):
    key: str = Field(description="The model, the UTC day (YYYY-MM-DD) the batch finished, or the endpoint.")
    batches: int
    requests: int = Field(description="Requests OpenAI completed.")
    input_tokens: int = Field(description="Includes the cached tokens.")
    cached_tokens: int
    output_tokens: int
    batch_cost_usd: float = Field(description="At batch rates (what was paid).")
    sync_cost_usd: float = Field(description="The same tokens at synchronous rates.")
    savings_usd: float
    unpriced_requests: int = Field(description="Requests of models the price table lacks (not in the USD).")


class UsageReport(BaseModel):
    group_by: str
    prices_taken_on: str = Field(description="When the prices were taken from OpenAI's price list.")
    data: list[UsageRow]


@router.get(
    "",
    response_model=UsageReport,
    responses=errors_doc(401, 422),
    summary="Reported tokens, cost at batch rates and savings against synchronous rates",
)
async def usage(
    conn: ConnDep,
    settings: SettingsDep,
    group_by: Annotated[Literal["model", "day", "endpoint"], Query()] = "model",
) -> dict:
    prices = load_prices(settings.model_prices_file)
    rows = await admin.usage(conn, group_by, prices=prices)
    return {"group_by": group_by, "prices_taken_on": prices.taken_on, "data": rows}
