"""Pydantic models documenting the batch operations, model-limit settings and OpenAI webhook routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batch_pipeline.states import EVERY_BATCH_STATE
from intake_api.schemas import EndpointUrl

BatchState = Literal[EVERY_BATCH_STATE]  # type: ignore[valid-type]
# Postgres text cannot hold U+0000: such a value is a client error (422), never a failed query (500).
NO_NUL = r"^[^\x00]*$"


class BatchSummary(BaseModel):
    id: int
    endpoint: str
    model: str
    state: str
    request_count: int
    size_bytes: int
    estimated_tokens: int
    openai_batch_id: str | None
    openai_status: str | None
    openai_completed: int | None
    openai_failed: int | None
    openai_total: int | None
    error_msg: str | None
    next_check_at: datetime | None = Field(description="When the pipeline next looks at this batch.")
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class BatchPage(BaseModel):
    data: list[BatchSummary]
    next_cursor: int | None = Field(description="Pass as `before` to get the next (older) page.")


class BatchTransition(BaseModel):
    from_state: str | None
    to_state: str
    reason: str | None
    transitioned_at: datetime


class BatchCost(BaseModel):
    """Estimated vs reported tokens, and what they cost (``admin.usage.batch_cost``)."""

    estimated_tokens: int = Field(description="Our estimate of the input tokens, at intake.")
    reported: bool = Field(description="Whether OpenAI reported usage for the batch yet.")
    requests: int | None = Field(description="Requests OpenAI completed.")
    input_tokens: int | None = Field(description="Reported; includes the cached tokens.")
    cached_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    batch_cost_usd: float | None = Field(description="At batch rates; None until reported or if unpriced.")
    sync_cost_usd: float | None = Field(description="The same tokens at synchronous rates.")
    savings_usd: float | None
    priced: bool = Field(description="Whether the price table has the batch's model.")
    prices_taken_on: str


class BatchDetail(BatchSummary):
    openai_input_file_id: str | None
    openai_output_file_id: str | None
    openai_error_file_id: str | None
    input_tokens: int | None = Field(description="Usage reported by OpenAI, once the batch finished.")
    cached_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    token_limit_retries: int
    capacity_wait_reason: str | None
    waiting_since: datetime | None
    # As OpenAI reported them: the batch's `errors.data` list (validation, token_limit_exceeded).
    last_openai_error: list[dict[str, Any]] | None
    expires_at: datetime | None
    launch_count: int
    resubmitted_count: int
    delivery_wave: int
    delivery_requested_at: datetime | None
    files_deleted_at: datetime | None
    request_counts: dict[str, int] = Field(description="Requests of this batch per request state.")
    transitions: list[BatchTransition] = Field(description="Every state change, oldest first.")
    cost: BatchCost | None = Field(None, description="Tokens estimated and reported, cost and savings.")


class UploadNowInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: EndpointUrl | None = Field(None, description="Only this endpoint's queued requests.")
    model: str | None = Field(
        None, min_length=1, pattern=NO_NUL, description="Only this model's queued requests."
    )


class CutBatch(BaseModel):
    id: int
    endpoint: str
    model: str
    request_count: int
    size_bytes: int
    estimated_tokens: int


class UploadNowResult(BaseModel):
    batch_ids: list[int]
    batches: list[CutBatch]
    message: str


class BatchAction(BaseModel):
    id: int
    state: str
    previous_state: str | None = None
    message: str


class CancelResult(BatchAction):
    cancelled_requests: int = Field(description="Requests cancelled here; at OpenAI results still come.")


class RestartResult(BatchAction):
    requeued_requests: int


class BatchRedelivered(BaseModel):
    batch_id: int
    only: Literal["failed", "all"]
    requeued: int
    state: str
    message: str


class ModelLimit(BaseModel):
    model_prefix: str
    token_limit: int


class ModelLimitOverride(ModelLimit):
    updated_at: datetime


class ModelLimits(BaseModel):
    defaults: list[ModelLimit] = Field(description="Built-in limits (OpenAI usage tier 1).")
    overrides: list[ModelLimitOverride] = Field(description="Set by operators; an override beats a default.")
    fallback_token_limit: int = Field(description="For models no prefix matches.")
    effective: dict[str, int] = Field(description="The limit that applies to each known prefix.")


class ModelLimitInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_limit: int = Field(gt=0, le=10**15, description="Enqueued tokens allowed at OpenAI at once.")


class WebhookAck(BaseModel):
    status: Literal["ok", "ignored"]
