"""Batch lifecycle as a pure function of the simulator clock.

Creating a batch plans its whole timeline; reading it cuts that timeline at "now". Cancel, force-complete
and force-expire rewrite the plan from the moment they happen. No background thread is involved, so the
state a client sees depends only on the clock and on what was requested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import OpenAIError
from .faults import BatchFault, Outcome
from .records import BatchRecord, Schedule, usage_object

TERMINAL = frozenset({"failed", "completed", "expired", "cancelled"})
WITH_RESULTS = frozenset({"completed", "expired", "cancelled"})
ENQUEUED = frozenset({"validating", "in_progress", "finalizing"})  # statuses that hold enqueued tokens

# Schedule field -> status it starts; the order breaks ties between events at the same instant.
_EVENTS = (
    ("in_progress_at", "in_progress"),
    ("finalizing_at", "finalizing"),
    ("cancelling_at", "cancelling"),
    ("failed_at", "failed"),
    ("expired_at", "expired"),
    ("cancelled_at", "cancelled"),
    ("completed_at", "completed"),
)
_EVENT_FIELDS = tuple(name for name, _ in _EVENTS)


@dataclass(frozen=True)
class Durations:
    validating: float
    in_progress: float
    finalizing: float
    cancelling: float


def status_at(batch: BatchRecord, now: float) -> str:
    status, latest = "validating", batch.created_at
    for name, event_status in _EVENTS:
        when = getattr(batch.schedule, name)
        if when is not None and latest <= when <= now:
            status, latest = event_status, when
    return status


def processed_at(batch: BatchRecord, now: float) -> int:
    """How many lines (in file order) have been executed by ``now``."""
    s = batch.schedule
    if s.progress_start is None or s.progress_end is None or now < s.progress_start:
        return 0
    if now >= s.progress_end:
        return s.progress_target
    fraction = (now - s.progress_start) / (s.progress_end - s.progress_start)
    return min(s.progress_target, math.floor(s.progress_target * fraction))


def terminal_time(batch: BatchRecord) -> float | None:
    s = batch.schedule
    times = [t for t in (s.completed_at, s.failed_at, s.expired_at, s.cancelled_at) if t is not None]
    return min(times) if times else None


def plan(
    batch: BatchRecord, durations: Durations, fault: str | None, errors: list[dict[str, Any]] | None
) -> None:
    """Lay out the batch's timeline at creation; validation errors make it fail after validating."""
    s = Schedule()
    batch.schedule = s
    validated = batch.created_at + durations.validating
    if errors:
        batch.errors = errors
        s.failed_at = validated
        return
    run_end = validated + durations.in_progress
    s.in_progress_at = s.progress_start = validated
    if fault == BatchFault.EXPIRE:
        s.progress_end, s.progress_target, s.expired_at = run_end, batch.requests // 2, run_end
    elif fault == BatchFault.CANCEL_MIDWAY:
        midway = validated + durations.in_progress / 2
        s.progress_end, s.progress_target = midway, batch.requests // 2
        s.cancelling_at, s.cancelled_at = midway, midway + durations.cancelling
    else:
        s.progress_end, s.progress_target = run_end, batch.requests
        s.finalizing_at, s.completed_at = run_end, run_end + durations.finalizing
    end = terminal_time(batch)
    if end is not None and end > batch.expires_at and status_at(batch, batch.expires_at) not in TERMINAL:
        force_expire(batch, batch.expires_at)  # the completion window ran out first


def _truncate(batch: BatchRecord, now: float) -> None:
    """Drop every planned event after ``now`` and freeze line progress where it stands."""
    s = batch.schedule
    done = processed_at(batch, now)
    for name in _EVENT_FIELDS:
        when = getattr(s, name)
        if when is not None and when > now:
            setattr(s, name, None)
    if s.progress_start is None or s.progress_start > now:
        s.progress_start = s.progress_end = None
        s.progress_target = 0
    else:
        s.progress_end = min(s.progress_end if s.progress_end is not None else now, now)
        s.progress_target = done
    if s.failed_at is None:
        batch.errors = None


def _require_open(batch: BatchRecord, now: float, action: str) -> str:
    status = status_at(batch, now)
    if status in TERMINAL:
        raise OpenAIError(409, f"Cannot {action} a batch with status '{status}'.", param="batch_id")
    return status


def cancel(batch: BatchRecord, now: float, cancelling_seconds: float) -> None:
    if _require_open(batch, now, "cancel") == "cancelling":
        return  # cancelling twice is harmless
    _truncate(batch, now)
    batch.schedule.cancelling_at = now
    batch.schedule.cancelled_at = now + cancelling_seconds


def force_complete(batch: BatchRecord, now: float) -> None:
    """Finish now: cancelling -> cancelled, doomed validation -> failed, anything else -> completed."""
    status = _require_open(batch, now, "complete")
    errors = batch.errors
    _truncate(batch, now)
    s = batch.schedule
    if status == "cancelling":
        s.cancelled_at = now
    elif errors:
        batch.errors, s.failed_at = errors, now
    else:
        s.in_progress_at = s.in_progress_at if s.in_progress_at is not None else now
        s.progress_start = s.progress_start if s.progress_start is not None else now
        s.progress_end, s.progress_target = now, batch.requests
        s.finalizing_at = s.finalizing_at if s.finalizing_at is not None else now
        s.completed_at = now


def force_expire(batch: BatchRecord, now: float) -> None:
    _require_open(batch, now, "expire")
    _truncate(batch, now)
    batch.errors = None
    batch.schedule.failed_at = None
    batch.schedule.expired_at = now


def request_counts(batch: BatchRecord, now: float, outcomes: bytearray) -> dict[str, int]:
    status = status_at(batch, now)
    started = batch.schedule.in_progress_at is not None and batch.schedule.in_progress_at <= now
    if status == "failed" or not (started or status in WITH_RESULTS):
        return {"total": 0, "completed": 0, "failed": 0}
    done = processed_at(batch, now)
    succeeded = outcomes.count(Outcome.OK, 0, done)
    failed = done - succeeded
    if status in ("expired", "cancelled"):
        failed += batch.requests - done  # never-run lines are reported in the error file
    return {"total": batch.requests, "completed": succeeded, "failed": failed}


def render(batch: BatchRecord, now: float, outcomes: bytearray) -> dict[str, Any]:
    """The OpenAI ``Batch`` object as seen at ``now``."""
    status = status_at(batch, now)

    def seen(field_name: str) -> int | None:
        when = getattr(batch.schedule, field_name)
        return int(when) if when is not None and when <= now else None

    body: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": {"object": "list", "data": batch.errors} if status == "failed" and batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file_id if batch.results_ready else None,
        "error_file_id": batch.error_file_id if batch.results_ready else None,
        "created_at": int(batch.created_at),
        "expires_at": int(batch.expires_at),
    }
    for name in _EVENT_FIELDS:
        body[name] = seen(name)
    body["request_counts"] = request_counts(batch, now, outcomes)
    body["usage"] = usage_object(batch.usage)
    body["metadata"] = batch.metadata
    return body
