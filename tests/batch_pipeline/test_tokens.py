"""Token estimation and per-model limits (unit)."""

from __future__ import annotations

from batch_pipeline.model_limits import DEFAULT_TOKEN_LIMITS, FALLBACK_TOKEN_LIMIT, token_limit_for
from batch_pipeline.tokens import count_embedding_inputs, estimate_tokens


def test_english_is_about_four_chars_per_token_with_safety() -> None:
    body = {"model": "m", "input": "a" * 4000}
    assert 1000 * 1.1 <= estimate_tokens("/v1/responses", body) <= 1000 * 1.1 + 10


def test_non_latin_counts_one_token_per_char() -> None:
    assert estimate_tokens("/v1/responses", {"input": "你" * 1000}, 1.0) >= 1000


def test_only_input_fields_count_and_images_are_skipped() -> None:
    small = estimate_tokens("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    with_junk = estimate_tokens(
        "/v1/chat/completions",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x" * 90000}}]}
            ],
            "metadata_not_counted": "y" * 90000,
        },
    )
    assert small < 20 and with_junk < 20


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
