"""Counters behind ``GET /_sim/stats``: what clients created, deleted, cancelled and which faults hit."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

_COUNTS = ("files_uploaded", "files_deleted", "batches_created", "cancel_requests", "http_requests")


@dataclass
class Stats:
    files_uploaded: int = 0
    files_deleted: int = 0
    batches_created: int = 0
    cancel_requests: int = 0
    http_requests: int = 0
    # metadata key -> value -> batches created with it: proves no logical batch was submitted twice
    batches_by_metadata: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    batches_by_endpoint: Counter[str] = field(default_factory=Counter)
    http_faults: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in _COUNTS},
            "batches_by_metadata": {key: dict(counts) for key, counts in self.batches_by_metadata.items()},
            "batches_by_endpoint": dict(self.batches_by_endpoint),
            "http_faults": dict(self.http_faults),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        stats = cls(**{name: int(data.get(name, 0)) for name in _COUNTS})
        for key, counts in data.get("batches_by_metadata", {}).items():
            stats.batches_by_metadata[key].update(counts)
        stats.batches_by_endpoint.update(data.get("batches_by_endpoint", {}))
        stats.http_faults.update(data.get("http_faults", {}))
        return stats
