"""Input-token estimation for capacity control, without a tokenizer download.

OpenAI's enqueued-token limit counts input tokens only. Everything in a request body that reaches the
model counts: messages and input, but also instructions, tool definitions and JSON schemas, which
OpenAI renders into the prompt. So we estimate from the whole JSONL line as sent:

    tokens ~ chars / 4 + 0.375 x (utf8_bytes - chars), x safety factor

English averages about four characters per token. A CJK character (3 UTF-8 bytes) then counts about
one token, a Cyrillic or Greek one (2 bytes) about 0.6: on the safe (high) side for non-Latin
scripts. JSON punctuation and keys also err high. Image and file payloads are the exception: base64
text would overcount wildly and OpenAI prices images differently, so a line carrying them is
estimated from its text fields only. The safety factor (``TOKEN_ESTIMATE_SAFETY_FACTOR``, default
1.1) covers the remaining error. Over-estimating only makes batches a little smaller;
under-estimating makes OpenAI fail them with ``token_limit_exceeded``.

The estimate is computed from lengths we already have, so it costs nothing on the intake hot path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import orjson


def _walk_text(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _walk_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            # Image/file payloads are priced differently and base64 text would wildly overcount.
            if key in ("image_url", "file_data", "image", "b64_json", "file_url"):
                continue
            yield from _walk_text(item)


def _text_tokens(chars: int, utf8_bytes: int) -> float:
    return chars / 4 + 0.375 * (utf8_bytes - chars)


# Keys whose values are binary payloads (base64 images, files). One regex scan: on the intake hot
# path it costs a fifth of six substring tests in a generator.
_BINARY_MARKERS = re.compile(r'"(?:image_url|file_data|image|b64_json|input_image|input_file)"')


def _may_carry_binary(line: str) -> bool:
    # Every marker holds one of these words; three substring tests cost half the regex scan, which
    # then runs only on the few lines that hold one.
    return ("image" in line or "file" in line or "b64_json" in line) and bool(_BINARY_MARKERS.search(line))


def estimate_tokens(line: str, utf8_bytes: int, body: dict | None, safety_factor: float = 1.1) -> int:
    """Estimated input tokens of one request, from its JSONL ``line`` (and its ``body`` for images;
    decoded from the line when not given)."""
    if _may_carry_binary(line):
        if body is None:
            body = orjson.loads(line)["body"]
        texts = (t for t in _walk_text(body) if not t.startswith("data:"))  # inline base64 files
        raw = sum(_text_tokens(len(t), len(t.encode())) for t in texts)
    else:
        raw = _text_tokens(len(line), utf8_bytes)
    return max(1, math.ceil(raw * safety_factor))


def count_embedding_inputs(body: dict) -> int:
    """How many embedding inputs one request adds (OpenAI caps a batch at 50,000)."""
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)
    return 1
