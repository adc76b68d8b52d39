"""Token estimation and per-model limits (unit)."""

from __future__ import annotations

import orjson

from batch_pipeline.intake.tokens import count_embedding_inputs, estimate_tokens
from batch_pipeline.model_limits import DEFAULT_TOKEN_LIMITS, FALLBACK_TOKEN_LIMIT, token_limit_for


def estimate(body: dict, safety: float = 1.1) -> int:
    line = orjson.dumps({"custom_id": "c", "method": "POST", "url": "/v1/responses", "body": body})
    return estimate_tokens(line.decode(), len(line), body, safety)


def test_english_is_about_four_chars_per_token_with_safety() -> None:
    tokens = estimate({"model": "m", "input": "a" * 4000})
    assert 1000 * 1.1 <= tokens <= 1000 * 1.1 + 30


def test_non_latin_counts_about_one_token_per_char() -> None:
    assert estimate({"input": "你" * 1000}, 1.0) >= 1000
    assert estimate({"input": "я" * 1000}, 1.0) >= 600


def test_tools_and_schemas_count_as_input() -> None:
    plain = estimate({"model": "m", "input": "hi"})
    with_schema = estimate({"model": "m", "input": "hi", "text": {"format": {"schema": {"d": "x" * 4000}}}})
    assert with_schema >= plain + 1000


def test_inline_images_are_not_counted_as_text() -> None:
    image = "data:image/png;base64," + "A" * 400_000
    body = {
        "model": "m",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": image},
                    {"type": "input_text", "text": "describe"},
                ],
            }
        ],
    }
    assert estimate(body) < 50


def test_embedding_inputs() -> None:
    assert count_embedding_inputs({"input": ["a", "b", "c"]}) == 3
    assert count_embedding_inputs({"input": "a"}) == 1
    assert count_embedding_inputs({"input": [1, 2, 3]}) == 1  # one pre-tokenised input


def test_limits_longest_prefix_and_overrides() -> None:
    assert token_limit_for("gpt-4o-mini-2024-07-18") == DEFAULT_TOKEN_LIMITS["gpt-4o-mini"]
    assert token_limit_for("gpt-4o-2024-08-06") == DEFAULT_TOKEN_LIMITS["gpt-4o"]
    assert token_limit_for("unknown-model") == FALLBACK_TOKEN_LIMIT
    assert token_limit_for("gpt-4o-mini", {"gpt-4o": 5}) == 5
    assert token_limit_for("gpt-4o-mini", {"gpt-4o": 5, "gpt-4o-mini": 9}) == 9
