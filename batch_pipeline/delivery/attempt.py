"""What one delivery is (a claimed request) and how one attempt ended; shared by both transports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The outcome codes of ``batchman.delivery_attempts.outcome`` (the seed's, plus blocked_by_policy).
SUCCESS = "success"
HTTP_STATUS_NOT_2XX = "http_status_not_2xx"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
QUEUE_NOT_FOUND = "queue_not_found"
BLOCKED_BY_POLICY = "blocked_by_policy"
OUTCOME_NO_RABBITMQ = "rabbitmq_not_configured"
OTHER = "other"

# Stored error texts (response bodies, exception messages) are cut to this many characters.
MAX_ERROR_CHARS = 2000


def idempotency_key(request_id: int) -> str:
    """The seed's key; also our Standard Webhooks ``webhook-id`` and the AMQP ``message_id``."""
    return f"batcher:req:{request_id}"


@dataclass(frozen=True)
class Delivery:
    """One claimed request: where its result goes and the exact bytes to send."""

    request_id: int
    custom_id: str
    delivery_config: dict[str, Any]
    body: bytes
    retries: int = 0  # transient failures so far in this delivery cycle
    failed_at_openai: bool = False  # the line carries OpenAI's error; delivered all the same

    @property
    def key(self) -> str:
        return idempotency_key(self.request_id)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended. ``transient`` failures are retried on the schedule; others are final."""

    outcome: str
    transient: bool = False
    http_status: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a Retry-After header
    duration_ms: int = 0
    attempted_at: datetime = field(default_factory=_now)

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCESS


def truncate(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_ERROR_CHARS:
        return text
    return text[:MAX_ERROR_CHARS] + "…"
