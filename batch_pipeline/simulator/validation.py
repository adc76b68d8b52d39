"""Checks on ``POST /v1/batches`` parameters (answered with 400) and on the input file (batch -> failed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import bad_request
from .faults import METADATA_FAULT_KEY, BatchFault
from .jsonl import FileSummary

# Data-driven on purpose: the endpoint list grew four times in two years.
ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
COMPLETION_WINDOWS = ("24h",)
METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
EXPIRES_MIN, EXPIRES_MAX = 3600, 30 * 86400
ORGANIZATION = "org-simulator"
_MAX_ERRORS = 100


@dataclass(frozen=True)
class CreateParams:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    output_expires_seconds: int | None
    fault: BatchFault | None


def _required_str(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if value is None:
        raise bad_request(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    if not isinstance(value, str):
        raise bad_request(f"Invalid type for '{key}': expected a string.", param=key, code="invalid_type")
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(
            "Invalid type for 'metadata': expected an object.", param="metadata", code="invalid_type"
        )
    if len(value) > METADATA_MAX_PAIRS:
        raise bad_request(
            f"Invalid 'metadata': too many keys ({len(value)}); at most {METADATA_MAX_PAIRS} are allowed.",
            param="metadata",
            code="invalid_value",
        )
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY:
            raise bad_request(
                f"Invalid 'metadata': key {key[:20]!r}… is longer than {METADATA_MAX_KEY} characters.",
                param=f"metadata.{key}",
                code="invalid_value",
            )
        if not isinstance(item, str):
            raise bad_request(
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(item) > METADATA_MAX_VALUE:
            raise bad_request(
                f"Invalid 'metadata.{key}': value is longer than {METADATA_MAX_VALUE} characters.",
                param=f"metadata.{key}",
                code="invalid_value",
            )
    return dict(value)


def expires_after_seconds(anchor: Any, seconds: Any, param: str) -> int:
    """Validate an ``{anchor, seconds}`` expiration policy and return its seconds."""
    if anchor != "created_at":
        raise bad_request(
            f"Invalid '{param}.anchor': only 'created_at' is supported.", param=f"{param}.anchor"
        )
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        raise bad_request(
            f"Invalid '{param}.seconds': expected an integer.", param=f"{param}.seconds"
        ) from None
    if not EXPIRES_MIN <= value <= EXPIRES_MAX:
        raise bad_request(
            f"Invalid '{param}.seconds': must be between {EXPIRES_MIN} and {EXPIRES_MAX}.",
            param=f"{param}.seconds",
            code="invalid_value",
        )
    return value


def parse_create(payload: Any) -> CreateParams:
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    input_file_id = _required_str(payload, "input_file_id")
    endpoint = _required_str(payload, "endpoint")
    if endpoint not in ENDPOINTS:
        raise bad_request(
            f"Invalid value for 'endpoint': {endpoint!r}. Supported values are: {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_value",
        )
    window = _required_str(payload, "completion_window")
    if window not in COMPLETION_WINDOWS:
        raise bad_request(
            f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    metadata = _metadata(payload.get("metadata"))
    fault = None
    if metadata and METADATA_FAULT_KEY in metadata:
        try:
            fault = BatchFault(metadata[METADATA_FAULT_KEY])
        except ValueError:
            allowed = ", ".join(f.value for f in BatchFault)
            raise bad_request(
                f"Unknown simulator fault {metadata[METADATA_FAULT_KEY]!r} in metadata.{METADATA_FAULT_KEY} "
                f"(one of: {allowed}).",
                param=f"metadata.{METADATA_FAULT_KEY}",
                code="invalid_value",
            ) from None
    expires = payload.get("output_expires_after")
    output_expires = None
    if expires is not None:
        if not isinstance(expires, dict):
            raise bad_request("Invalid type for 'output_expires_after'.", param="output_expires_after")
        output_expires = expires_after_seconds(
            expires.get("anchor"), expires.get("seconds"), "output_expires_after"
        )
    return CreateParams(input_file_id, endpoint, window, metadata, output_expires, fault)


def _error(code: str, message: str, line: int | None, param: str | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def input_errors(
    summary: FileSummary, endpoint: str, fault: BatchFault | None, max_embedding_inputs: int
) -> list[dict[str, Any]]:
    """Why validation fails, one ``errors.data`` entry per offending line (capped); empty when it passes."""
    errors = [
        _error(
            "invalid_request", f"Line {n}: simulated invalid request (x_sim_fault=invalid_line).", n, "body"
        )
        for n in summary.invalid_lines
    ]
    if fault == BatchFault.VALIDATION_FAILED and not errors:
        message = f"Line 1: simulated validation failure (metadata {METADATA_FAULT_KEY}=validation_failed)."
        errors.append(_error("invalid_request", message, 1, "body"))
    for url, lines in summary.url_lines.items():
        if url != endpoint:
            message = "The url {!r} on line {} does not match the batch endpoint {!r}."
            errors.extend(_error("invalid_url", message.format(url, n, endpoint), n, "url") for n in lines)
    errors.extend(
        _error("streaming_unsupported", f"Line {n}: streaming is not supported in batches.", n, "body.stream")
        for n in summary.stream_lines
    )
    if summary.first_model_mismatch_line is not None:
        n = summary.first_model_mismatch_line
        first, other = summary.models[0], summary.models[1]
        message = f"Line {n}: uses model {other!r}; this batch uses {first!r} (one model per batch)."
        errors.append(_error("invalid_request", message, n, "body.model"))
    if endpoint == "/v1/embeddings" and summary.embedding_inputs > max_embedding_inputs:
        count = summary.embedding_inputs
        message = f"The batch has {count} embedding inputs; at most {max_embedding_inputs} are allowed."
        errors.append(_error("invalid_request", message, None, "body.input"))
    errors.sort(key=lambda e: (e["line"] is None, e["line"] or 0))
    return errors[:_MAX_ERRORS]


FORCED_TOKEN_LIMIT = 2_000_000


def token_limit_error(model: str | None, limit: int | None) -> dict[str, Any]:
    # A forced fault on a model without a configured limit still names a number, as OpenAI does
    # (clients parse it); 2,000,000 is the tier-1 limit of the common small models.
    limit_text = f"{limit or FORCED_TOKEN_LIMIT:,}"
    message = (
        f"Enqueued token limit reached for {model or 'this model'} in organization {ORGANIZATION}. "
        f"Limit: {limit_text} enqueued tokens. "
        "Please try again once some in_progress batches have been completed."
    )
    return _error("token_limit_exceeded", message, None, None)
