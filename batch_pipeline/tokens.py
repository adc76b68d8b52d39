"""Input-token estimation for capacity control, without a tokenizer download.

OpenAI's enqueued-token limit counts input tokens only. We estimate them from the text in the
endpoint's input-bearing fields (``messages``, ``input``, ``prompt``, ``instructions``…):

    tokens ≈ ascii_chars / 4 + non_ascii_chars x 1 + 4 per message/item, x safety factor

English averages about four characters per token; CJK and other non-Latin scripts are close to one
token per character, so counting them at one keeps the estimate on the safe (high) side. The safety
factor (``TOKEN_ESTIMATE_SAFETY_FACTOR``, default 1.1) covers the remaining error. Over-estimating only
makes batches a little smaller; under-estimating makes OpenAI fail them with ``token_limit_exceeded``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from batch_pipeline.endpoints import ENDPOINTS

# Role markers and separators OpenAI adds around each chat message.
PER_ITEM_OVERHEAD = 4


def _walk_text(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _walk_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            # Image/file payloads are priced differently and base64 text would wildly overcount.
            if key in ("image_url", "file_data", "image", "b64_json"):
                continue
            yield from _walk_text(item)


def _count_items(value: object) -> int:
    return len(value) if isinstance(value, list) else 1


def estimate_tokens(url: str, body: dict, safety_factor: float = 1.1) -> int:
    """Estimated input tokens of one request body sent to ``url``; at least 1."""
    endpoint = ENDPOINTS.get(url)
    fields = endpoint.input_fields if endpoint else ("input", "messages", "prompt")
    raw = 0.0
    items = 0
    for field in fields:
        if field not in body:
            continue
        items += _count_items(body[field])
        for text in _walk_text(body[field]):
            ascii_chars = sum(1 for ch in text if ord(ch) < 128) if not text.isascii() else len(text)
            raw += ascii_chars / 4 + (len(text) - ascii_chars)
    raw += PER_ITEM_OVERHEAD * items
    return max(1, math.ceil(raw * safety_factor))


def count_embedding_inputs(body: dict) -> int:
    """How many embedding inputs one request adds (OpenAI caps a batch at 50,000)."""
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1
