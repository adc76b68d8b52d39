"""Fault markers and per-line outcomes.

Markers are read, never stripped: a request body key ``x_sim_fault`` picks the fate of one line, batch
metadata key ``sim_fault`` picks the fate of a whole batch. Rate-based line faults are drawn from a random
generator seeded with ``SIMULATOR_SEED`` and the batch id, so a batch's outcomes never depend on timing.
"""

from __future__ import annotations

import random
from enum import IntEnum, StrEnum
from typing import Any

LINE_MARKER_KEY = "x_sim_fault"
METADATA_FAULT_KEY = "sim_fault"
HTTP_FAULT_HEADER = "x-sim-http-fault"
REJECTED_MARKER = "_rejected"  # internal: set at upload for bodies the endpoint would refuse


class LineFault(StrEnum):
    SERVER_ERROR = "server_error"
    REQUEST_TIMEOUT = "request_timeout"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    RATE_LIMIT = "rate_limit"
    INVALID_LINE = "invalid_line"
    # The whole batch expires with partial results, as metadata ``sim_fault=expire`` does: for clients
    # (like a pipeline) that cannot set a batch's metadata. The marked line itself runs as usual.
    EXPIRE_BATCH = "expire_batch"


class BatchFault(StrEnum):
    VALIDATION_FAILED = "validation_failed"
    TOKEN_LIMIT_EXCEEDED = "token_limit_exceeded"
    EXPIRE = "expire"
    CANCEL_MIDWAY = "cancel_midway"


class HttpFault(StrEnum):
    RATE_LIMIT = "429"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    DROP = "drop"  # hang up before the route runs: nothing happened
    DROP_AFTER = "drop_after"  # the route runs to completion, then hang up: it happened, unheard
    SLOW = "slow"


class Outcome(IntEnum):
    """What happens to one executed line; stored one byte per line."""

    OK = 0
    BAD_REQUEST = 1
    CONTEXT_LENGTH_EXCEEDED = 2
    RATE_LIMIT = 3
    SERVER_ERROR = 4
    REQUEST_TIMEOUT = 5
    REJECTED = 6  # the endpoint refuses the body; the reply builder explains why


_MARKER_OUTCOME = {
    LineFault.SERVER_ERROR: Outcome.SERVER_ERROR,
    LineFault.REQUEST_TIMEOUT: Outcome.REQUEST_TIMEOUT,
    LineFault.BAD_REQUEST: Outcome.BAD_REQUEST,
    LineFault.CONTEXT_LENGTH_EXCEEDED: Outcome.CONTEXT_LENGTH_EXCEEDED,
    LineFault.RATE_LIMIT: Outcome.RATE_LIMIT,
}

# (status, error type, code, param, message) of the HTTP failure a line reports in the error file.
_HTTP_FAILURES: dict[Outcome, tuple[int, str, str | None, str | None, str]] = {
    Outcome.BAD_REQUEST: (400, "invalid_request_error", "invalid_value", None, "Simulated invalid request."),
    Outcome.CONTEXT_LENGTH_EXCEEDED: (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        "Simulated: this request exceeds the model's maximum context length.",
    ),
    Outcome.RATE_LIMIT: (
        429,
        "requests",
        "rate_limit_exceeded",
        None,
        "Simulated rate limit for this request.",
    ),
    Outcome.SERVER_ERROR: (
        500,
        "server_error",
        None,
        None,
        "Simulated server error while processing this request.",
    ),
}

TIMEOUT_ERROR = {
    "code": "request_timeout",
    "message": "Simulated: the underlying call to the model timed out.",
}
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
CANCELLED_ERROR = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}


def outcome_for_marker(value: Any) -> Outcome | None:
    if value == REJECTED_MARKER:
        return Outcome.REJECTED
    try:
        return _MARKER_OUTCOME.get(LineFault(value))
    except ValueError:
        return None


def http_failure(outcome: Outcome) -> tuple[int, dict[str, Any]]:
    """Status code and ``{"error": …}`` body for a line that failed at the HTTP level."""
    status, type_, code, param, message = _HTTP_FAILURES[outcome]
    return status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def line_outcomes(
    count: int,
    markers: dict[int, str],
    *,
    seed: int,
    batch_id: str,
    server_error_rate: float,
    timeout_rate: float,
) -> bytearray:
    """Outcome of every line of a batch: explicit markers win over rate-based draws."""
    outcomes = bytearray(count)
    if server_error_rate > 0 or timeout_rate > 0:
        rng = random.Random(f"{seed}:{batch_id}:lines")
        for index in range(count):
            draw = rng.random()
            if draw < server_error_rate:
                outcomes[index] = Outcome.SERVER_ERROR
            elif draw < server_error_rate + timeout_rate:
                outcomes[index] = Outcome.REQUEST_TIMEOUT
    for index, marker in markers.items():
        outcome = outcome_for_marker(marker)
        if outcome is not None and index < count:
            outcomes[index] = outcome
    return outcomes
