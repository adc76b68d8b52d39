"""Pydantic models that document the API in OpenAPI. Validation itself lives in ``batch_pipeline``.

The request models describe the accepted shape (``body`` passes through, so it is open); the response
models are what the handlers really return.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batch_pipeline.intake.endpoints import SUPPORTED_URLS

EndpointUrl = Literal[SUPPORTED_URLS]  # type: ignore[valid-type]


class DeliveryWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["webhook"]
    webhook_url: str = Field(
        max_length=2048,
        description="http(s) URL that receives the result line as a JSON POST. Credential-like query "
        "values (token=, key=, sig=, ...) are shown masked.",
    )
    headers: dict[str, str] | None = Field(
        default=None,
        description="Credentials the receiver needs, sent with every attempt and shown masked: names from "
        "Authorization, X-Api-Key, Api-Key, X-Auth-Token, X-Webhook-Token, X-Webhook-Secret (any case); "
        "values at most 1,024 printable ASCII characters.",
    )


class DeliveryRabbitMQ(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["rabbitmq"]
    rabbitmq_queue: str = Field(
        max_length=255, description="Existing queue; published via the default exchange."
    )


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    model: str = Field(description="OpenAI model; requests are batched per (url, model).")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1, max_length=512, description="Globally unique id of your request.")
    url: EndpointUrl
    method: Literal["POST"]
    body: RequestBody = Field(description="The OpenAI request body, passed through untouched.")
    delivery_config: DeliveryWebhook | DeliveryRabbitMQ = Field(discriminator="type")


class Accepted(BaseModel):
    custom_id: str


class ErrorSource(BaseModel):
    pointer: str


class ErrorItem(BaseModel):
    code: str
    title: str
    detail: str
    source: ErrorSource | None = None


class ErrorEnvelope(BaseModel):
    errors: list[ErrorItem]


class BulkItemResult(BaseModel):
    status: Literal["accepted", "duplicate", "invalid", "too_large"]
    custom_id: str | None
    errors: list[ErrorItem] | None = None


class BulkResponse(BaseModel):
    accepted: int
    duplicate: int
    invalid: int
    results: list[BulkItemResult]


class DeliveryAttempt(BaseModel):
    id: int
    outcome: str
    error_msg: str | None
    delivery_config: dict[str, Any]
    http_status: int | None
    duration_ms: int | None
    attempted_at: datetime


class RequestSummary(BaseModel):
    id: int
    batch_id: int | None
    custom_id: str
    url: str
    model: str
    state: str
    delivery_config: dict[str, Any]
    error_msg: str | None
    created_at: datetime
    updated_at: datetime
    request_payload_size: int
    delivery_attempt_count: int
    next_attempt_at: datetime | None
    estimated_tokens: int


class RequestDetail(RequestSummary):
    delivery_attempts: list[DeliveryAttempt]
    result: dict[str, Any] | None = Field(
        None, description="The OpenAI output or error line for this request, once results are in."
    )


class RequestPage(BaseModel):
    data: list[RequestSummary]
    next_cursor: int | None = Field(description="Pass as `before` to get the next (older) page.")


class Redelivered(BaseModel):
    id: int
    custom_id: str
    state: str
    message: str


class Health(BaseModel):
    status: str
    simulator: bool


class Ready(BaseModel):
    status: str
    checks: dict[str, str]


def errors_doc(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all in the error envelope."""
    return {code: {"model": ErrorEnvelope} for code in codes}
