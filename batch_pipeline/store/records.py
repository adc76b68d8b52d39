"""The values that cross into and out of the store: a validated request (intake writes it), a claimed
delivery and how one attempt ended (delivery reads and records them). Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from batch_pipeline.states import SUCCESS


# A msgspec Struct, not a dataclass: it is built in C, and with gc=False the garbage collector does not
# track it (it holds only strings, ints and a dict of strings, so it cannot be part of a cycle). A bulk
# call keeps one per item alive; tracked, they set off full collections that cost a third of the
# intake's CPU. Not frozen (that costs a setattr per field); treat it as read-only all the same.
class NewRequest(msgspec.Struct, gc=False):
    custom_id: str
    url: str
    model: str
    payload: str  # the exact JSONL line for OpenAI
    payload_bytes: int
    estimated_tokens: int
    delivery_config: dict[str, Any]  # strings, but a webhook's optional ``headers`` object
    input_count: int = 1  # embedding inputs; OpenAI caps them per batch


# Stored error texts of our own making (exception messages) are cut to this many characters.
MAX_ERROR_CHARS = 2000
# What a receiver answered with a failure is stored with the attempt, cut to this many UTF-8 bytes (the
# receiver decides its size: 2,000 characters of it could be 8 KB in every attempt row).
MAX_REPLY_BYTES = 512


def idempotency_key(request_id: int) -> str:
    """The Elixir service's key; also our Standard Webhooks ``webhook-id`` and the AMQP ``message_id``."""
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


def truncate_bytes(text: str, max_bytes: int = MAX_REPLY_BYTES) -> str:
    """``text`` in at most ``max_bytes`` UTF-8 bytes, "…" included when cut, never splitting a character.

    NUL becomes U+FFFD: Postgres text cannot hold it, and a receiver may answer with anything.
    """
    text = text.replace("\x00", "\ufffd")
    if len(text) * 4 <= max_bytes:  # cannot be over, whatever the characters
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    # Cut, then drop the partial character at the end (the rest is valid UTF-8, so only that goes).
    return encoded[: max_bytes - len("…".encode())].decode("utf-8", "ignore") + "…"
