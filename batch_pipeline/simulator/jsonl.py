"""Incremental validation of a batch input file, fed chunk by chunk while the upload streams to disk.

Besides accepting or rejecting the file, the validator keeps a small :class:`FileSummary` (request count,
token estimate, models, urls, fault markers) so creating a batch never has to read the file again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .checks import CHECKS, refusal
from .errors import OpenAIError, bad_request
from .faults import LINE_MARKER_KEY, REJECTED_MARKER, LineFault
from .textgen import line_tokens

_KEEP_LINES = 1000  # cap on remembered line numbers per category: errors.data stays readable
_KEEP_URLS = 50
MAX_LINE_BYTES = 64 * 1024 * 1024  # bounds the memory one unterminated line can take


def count_embedding_inputs(body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(item, int) for item in value):
        return len(value)  # a list of strings or of token arrays: one input per item
    return 1


@dataclass
class FileSummary:
    requests: int = 0
    tokens: int = 0
    embedding_inputs: int = 0
    models: list[str] = field(default_factory=list)
    first_model_mismatch_line: int | None = None
    url_lines: dict[str, list[int]] = field(default_factory=dict)
    stream_lines: list[int] = field(default_factory=list)
    invalid_lines: list[int] = field(default_factory=list)
    markers: dict[int, str] = field(default_factory=dict)  # request index -> x_sim_fault value
    expire_batch: bool = False  # a line carries x_sim_fault=expire_batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileSummary:
        values = dict(data)
        values["markers"] = {int(k): v for k, v in data.get("markers", {}).items()}
        return cls(**values)


class JsonlValidator:
    """Feed bytes with :meth:`feed`, then call :meth:`finish`; ``error`` holds the first problem found."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self.summary = FileSummary()
        self.error: OpenAIError | None = None
        self._pending = bytearray()
        self._line_no = 0
        self._scanned = 0  # bytes of _pending already known to hold no newline
        self._custom_ids: set[str] = set()

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        self._pending += data
        start = 0
        while self.error is None:
            end = self._pending.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            self._line(bytes(self._pending[start:end]))
            start = end + 1
        del self._pending[:start]
        if self.error is not None:
            self._pending.clear()
        self._scanned = len(self._pending)
        if self.error is None and self._scanned > MAX_LINE_BYTES:
            self._line_no += 1
            self._fail(f"a line is longer than {MAX_LINE_BYTES} bytes")

    def finish(self) -> None:
        if self.error is None and self._pending:
            self._line(bytes(self._pending))
        self._pending.clear()
        if self.error is None and self.summary.requests == 0:
            self._fail("the file contains no requests")

    def _fail(self, problem: str) -> None:
        prefix = f"line {self._line_no}: " if self._line_no else ""
        self.error = bad_request(
            f"Invalid batch input file: {prefix}{problem}", param="file", code="invalid_file_format"
        )

    def _line(self, raw: bytes) -> None:
        self._line_no += 1
        if self._line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.strip()
        if not raw:
            return  # blank lines (e.g. a trailing newline) are not requests
        try:
            obj = json.loads(raw)
        except ValueError:
            return self._fail("not valid JSON")
        if not isinstance(obj, dict):
            return self._fail("each line must be a JSON object")
        problem = self._shape_problem(obj)
        if problem:
            return self._fail(problem)
        if self.summary.requests >= self.max_requests:
            return self._fail(f"more than {self.max_requests} requests; a batch holds at most that many")
        self._custom_ids.add(obj["custom_id"])
        self._record(obj, line_tokens(raw))

    def _shape_problem(self, obj: dict[str, Any]) -> str | None:
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return "'custom_id' must be a non-empty string"
        if custom_id in self._custom_ids:
            return f"duplicate custom_id {custom_id!r}; custom_id must be unique within a file"
        if obj.get("method") != "POST":
            return "'method' must be \"POST\""
        if not isinstance(obj.get("url"), str) or not obj["url"].startswith("/"):
            return "'url' must be a path such as \"/v1/chat/completions\""
        body = obj.get("body")
        if not isinstance(body, dict):
            return "'body' must be a JSON object"
        marker = body.get(LINE_MARKER_KEY)
        if marker is not None and marker not in set(LineFault):
            allowed = ", ".join(f.value for f in LineFault)
            return f"unknown {LINE_MARKER_KEY} value {marker!r} (one of: {allowed})"
        return None

    def _record(self, obj: dict[str, Any], tokens: int) -> None:
        summary, body, line = self.summary, obj["body"], self._line_no
        index = summary.requests
        summary.requests += 1
        summary.tokens += tokens
        model = body.get("model")
        if isinstance(model, str):
            if not summary.models:
                summary.models.append(model)
            elif model != summary.models[0] and summary.first_model_mismatch_line is None:
                summary.models.append(model)
                summary.first_model_mismatch_line = line
        # Any second url already dooms the batch, so a bounded sample of distinct urls is enough.
        if obj["url"] in summary.url_lines or len(summary.url_lines) < _KEEP_URLS:
            url_lines = summary.url_lines.setdefault(obj["url"], [])
            if len(url_lines) < _KEEP_LINES:
                url_lines.append(line)
        if body.get("stream") is True and len(summary.stream_lines) < _KEEP_LINES:
            summary.stream_lines.append(line)
        if obj["url"].endswith("/embeddings"):
            summary.embedding_inputs += count_embedding_inputs(body)
        marker = body.get(LINE_MARKER_KEY)
        if marker == LineFault.INVALID_LINE:
            if len(summary.invalid_lines) < _KEEP_LINES:
                summary.invalid_lines.append(line)
        elif marker == LineFault.EXPIRE_BATCH:
            summary.expire_batch = True
        elif marker is not None:
            summary.markers[index] = marker
        if obj["url"] in CHECKS and refusal(obj["url"], body) is not None:
            # The endpoint would refuse this body: the line fails with a 400 whatever its marker says.
            summary.markers[index] = REJECTED_MARKER
