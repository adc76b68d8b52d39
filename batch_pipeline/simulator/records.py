"""The simulator's state objects and how they render as OpenAI JSON.

A batch stores its whole planned timeline (``Schedule``) when it is created; what a client sees is that
timeline cut at the current simulator time (see ``engine.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .jsonl import FileSummary


@dataclass
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    path: str
    seq: int
    summary: FileSummary | None = None
    deleted: bool = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def visible(self, now: float) -> bool:
        return not self.deleted and not self.expired(now)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def to_state(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("summary")  # summaries are immutable and live in a sidecar file
        return data

    @classmethod
    def from_state(cls, data: dict[str, Any], summary: FileSummary | None) -> FileRecord:
        return cls(**data, summary=summary)

    @property
    def file_path(self) -> Path:
        return Path(self.path)


@dataclass
class Schedule:
    """Planned event times (simulator seconds). ``None``: the event does not happen."""

    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    # Lines are executed in file order, linearly from progress_start until progress_target lines are
    # done at progress_end.
    progress_start: float | None = None
    progress_end: float | None = None
    progress_target: int = 0


@dataclass
class BatchRecord:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    model: str | None
    created_at: float
    expires_at: float
    seq: int
    requests: int
    tokens: int
    input_path: str
    output_expires_seconds: int
    line_server_error_rate: float
    line_timeout_rate: float
    schedule: Schedule = field(default_factory=Schedule)
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    results_ready: bool = False

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> BatchRecord:
        values = dict(data)
        values["schedule"] = Schedule(**data["schedule"])
        return cls(**values)


def usage_object(usage: dict[str, int]) -> dict[str, Any]:
    input_tokens = usage.get("input_tokens", 0)
    output_tokens = usage.get("output_tokens", 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
        "total_tokens": input_tokens + output_tokens,
    }
