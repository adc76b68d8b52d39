"""The OpenAI endpoints a batch may target, kept as data: the list grew four times in two years.

``input_field`` names the body field whose text dominates the input tokens (used by token estimation);
``max_inputs`` is OpenAI's per-batch cap on embedding inputs where one exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    url: str
    input_fields: tuple[str, ...]
    max_inputs: int | None = None


ENDPOINTS: dict[str, Endpoint] = {
    e.url: e
    for e in (
        Endpoint("/v1/responses", ("input", "instructions")),
        Endpoint("/v1/chat/completions", ("messages",)),
        Endpoint("/v1/completions", ("prompt",)),
        Endpoint("/v1/embeddings", ("input",), max_inputs=50_000),
        Endpoint("/v1/moderations", ("input",)),
        Endpoint("/v1/images/generations", ("prompt",)),
        Endpoint("/v1/images/edits", ("prompt",)),
        Endpoint("/v1/videos", ("prompt",)),
    )
}

SUPPORTED_URLS: tuple[str, ...] = tuple(ENDPOINTS)
