"""Per-model enqueued-token limits: built-in defaults plus operator overrides (longest prefix wins).

OpenAI publishes no API for the remaining batch queue headroom, so we keep our own ledger against
these limits. Defaults are OpenAI's usage-tier-1 batch queue limits; raise them in the settings API
once your organisation is on a higher tier.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_TOKEN_LIMITS: dict[str, int] = {
    "gpt-4o-mini": 2_000_000,
    "gpt-4o": 90_000,
    "gpt-4.1-mini": 2_000_000,
    "gpt-4.1-nano": 2_000_000,
    "gpt-4.1": 900_000,
    "gpt-5-mini": 5_000_000,
    "gpt-5-nano": 5_000_000,
    "gpt-5": 1_500_000,
    "o3-mini": 2_000_000,
    "o4-mini": 2_000_000,
    "o3": 90_000,
    "text-embedding-3-small": 3_000_000,
    "text-embedding-3-large": 3_000_000,
    "text-embedding-ada-002": 3_000_000,
    "omni-moderation": 3_000_000,
}

# Models we know nothing about get a conservative but usable budget.
FALLBACK_TOKEN_LIMIT = 2_000_000


def _longest_prefix(model: str, table: Mapping[str, int]) -> int | None:
    best = None
    for prefix, limit in table.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, limit)
    return best[1] if best else None


def token_limit_for(model: str, overrides: Mapping[str, int] | None = None) -> int:
    """The enqueued-token limit for ``model``: an override beats a default; longest prefix wins."""
    if overrides:
        limit = _longest_prefix(model, overrides)
        if limit is not None:
            return limit
    limit = _longest_prefix(model, DEFAULT_TOKEN_LIMITS)
    return limit if limit is not None else FALLBACK_TOKEN_LIMIT
