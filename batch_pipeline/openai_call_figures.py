"""The OpenAI calls of this process, counted per operation and outcome with their latency.

The clients of ``openai_client`` time every HTTP call (SDK retries included) into ``RECORDER``;
``flush_calls_to`` hands the figures to a sink (``store.openai_calls`` writes them to the database,
where ``/metrics`` reads them) every few seconds and at exit: runs are short-lived processes, maybe on
other hosts, with no exporter of their own. Nothing here imports the SDK, so ``/metrics`` can use the
bucket bounds without loading it.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

# Upper bounds, in seconds, of the call latency histogram (the last bucket is +Inf): a status poll
# takes tens of milliseconds, an upload of 200 MB up to PIPELINE_TIMEOUT_SECONDS.
CALL_BUCKETS_SECONDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# How often a process hands its pending figures to the sink (and once more at exit).
CALL_FLUSH_SECONDS = 10.0
_RESOURCES = ("files", "batches")
log = logging.getLogger(__name__)


@dataclass
class CallTotals:
    """One (operation, outcome)'s calls since the last flush; ``buckets[i]`` counts the calls that took
    at most ``CALL_BUCKETS_SECONDS[i]`` and more than the bound before (the last one: the rest)."""

    operation: str
    outcome: str
    calls: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(CALL_BUCKETS_SECONDS) + 1))

    def add(self, calls: int, seconds: float, buckets: list[int]) -> None:
        self.calls += calls
        self.seconds += seconds
        self.buckets = [a + b for a, b in zip(self.buckets, buckets, strict=True)]


class CallRecorder:
    """This process's calls since the last flush: one small total per (operation, outcome), never a row
    per call. Thread-safe (the SDK is used from sensor threads and ``asyncio.to_thread``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], CallTotals] = {}
        self._sink: Callable[[list[CallTotals]], None] | None = None
        self._interval = CALL_FLUSH_SECONDS
        self._thread: threading.Thread | None = None
        # A forked child (the code server's run workers, defs/code_server.py) has none of its parent's
        # threads, and a lock the flusher held at the fork would stay held: start afresh there.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending, self._thread = {}, None

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        buckets = [0] * (len(CALL_BUCKETS_SECONDS) + 1)
        buckets[next((i for i, b in enumerate(CALL_BUCKETS_SECONDS) if seconds <= b), -1)] = 1
        self._merge([CallTotals(operation, outcome, 1, seconds, buckets)])
        if self._thread is None and self._sink is not None:
            self._start_flushing()

    def _merge(self, rows: list[CallTotals]) -> None:
        with self._lock:
            for row in rows:
                key = (row.operation, row.outcome)
                self._pending.setdefault(key, CallTotals(*key)).add(row.calls, row.seconds, row.buckets)

    def take(self) -> list[CallTotals]:
        """The pending totals, which are no longer pending."""
        with self._lock:
            rows, self._pending = list(self._pending.values()), {}
        return rows

    def flush(self) -> int:
        """Hand the pending totals to the sink; kept for the next flush if there is none or it fails."""
        sink = self._sink
        rows = self.take() if sink is not None else []
        if not rows:
            return 0
        try:
            sink(rows)
        except Exception as exc:  # the database may be down a moment: the figures wait, calls go on
            log.warning("OpenAI call figures not written yet: %s", type(exc).__name__)
            self._merge(rows)
            return 0
        return len(rows)

    def flush_to(
        self, sink: Callable[[list[CallTotals]], None], interval: float = CALL_FLUSH_SECONDS
    ) -> None:
        """From the first call on, flush every ``interval`` seconds (a daemon thread) and at exit; the
        last sink given is used. Nothing starts before a call: a process that imports the definitions
        and forks run workers (the code server's forkserver) must have no thread of its own."""
        with self._lock:
            self._sink, self._interval = sink, interval
            pending = bool(self._pending)
        if pending:
            self._start_flushing()

    def _start_flushing(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._flush_every, args=(self._interval,), name="openai-call-figures", daemon=True
            )
        atexit.register(self.flush)
        # A run worker forked by the code server leaves by os._exit once multiprocessing's exit
        # handlers have run, never Python's atexit: flush there too (the second flush of a process
        # that has both finds nothing left).
        multiprocessing.util.Finalize(None, self.flush, exitpriority=10)
        self._thread.start()

    def _flush_every(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            self.flush()


RECORDER = CallRecorder()


def flush_calls_to(sink: Callable[[list[CallTotals]], None], interval: float = CALL_FLUSH_SECONDS) -> None:
    RECORDER.flush_to(sink, interval)


def operation_of(method: str, path: str) -> str:
    """``files.create``, ``batches.retrieve``, ``files.content``…, or ``other``: a few fixed names,
    whatever the ids in the path (they would make a label per file)."""
    parts = [p for p in path.split("/") if p]
    at = next((i for i, p in enumerate(parts) if p in _RESOURCES), None)
    if at is None:
        return "other"
    rest = parts[at + 1 :]
    if not rest:
        action = {"GET": "list", "POST": "create"}.get(method)
    elif len(rest) == 1:
        action = {"GET": "retrieve", "DELETE": "delete"}.get(method)
    else:
        action = rest[1] if len(rest) == 2 and rest[1] in ("content", "cancel") else None
    return f"{parts[at]}.{action}" if action else "other"


def outcome_of(status: int | None, exc: BaseException | None = None) -> str:
    if exc is not None:
        if isinstance(exc, httpx2.TimeoutException):
            return "timeout"
        return "connection_error" if isinstance(exc, httpx2.TransportError) else "error"
    assert status is not None
    if status < 400:
        return "ok"
    if status == 429:
        return "rate_limited"
    return "server_error" if status >= 500 else "client_error"
