"""When to try again after a transient failure: a fixed schedule with jitter, Retry-After honoured.

The schedule is ``DELIVERY_RETRY_SCHEDULE_SECONDS``: entry ``n`` is the wait after the ``n+1``-th
transient failure in a delivery cycle; past the last entry the request is finally ``delivery_failed``.
Jitter spreads the retries of a whole batch whose receiver was down, so they do not all land at once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


def next_delay(
    retries_so_far: int,
    schedule: Sequence[float],
    jitter: float = 0.2,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the schedule is exhausted.

    ``retries_so_far`` counts transient failures before this one in the current cycle. A receiver's
    ``Retry-After`` is honoured as a lower bound, capped at the longest wait of the schedule so a
    hostile value cannot park a result forever.
    """
    if retries_so_far >= len(schedule):
        return None
    base = float(schedule[retries_so_far])
    if jitter:
        base *= 1 + (rng or random).uniform(-jitter, jitter)
    if retry_after is not None and retry_after > 0:
        base = max(base, min(retry_after, max(schedule)))
    return max(base, 0.0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
