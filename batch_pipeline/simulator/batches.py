"""Batch operations: create (with validation planning and enqueued-token limits), read, list, cancel,
force-complete and force-expire, plus idempotent generation of result files when a batch finishes."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from . import engine
from .errors import OpenAIError, bad_request, not_found
from .faults import BatchFault, line_outcomes
from .ids import new_batch_id, new_file_id
from .records import BatchRecord
from .results import write_results
from .store import Store, paginate
from .validation import CreateParams, input_errors, token_limit_error


class BatchService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._outcomes: dict[str, bytearray] = {}
        self._result_locks: dict[str, threading.Lock] = {}

    # -- create -------------------------------------------------------------------------------------
    def create(self, params: CreateParams) -> dict[str, Any]:
        store, settings = self.store, self.store.settings
        with store.lock:
            now = store.now()
            try:
                source = store.get_file(params.input_file_id)
            except OpenAIError:
                raise not_found("File", params.input_file_id, param="input_file_id") from None
            if source.purpose != "batch" or source.summary is None:
                raise bad_request(
                    f"File {source.id} has purpose {source.purpose!r}; a batch needs purpose 'batch'.",
                    param="input_file_id",
                )
            summary = source.summary
            model = summary.models[0] if summary.models else None
            if store.faults.create_token_limit_refusals > 0:
                # Some organisations see the token queue enforced at create time as a 400.
                store.faults.create_token_limit_refusals -= 1
                limit = store.faults.token_limits.get(model) if model else None
                err = token_limit_error(model, limit)
                raise bad_request(err["message"], code="token_limit_exceeded")
            fault = params.fault or (BatchFault.EXPIRE if summary.expire_batch else None)
            errors = input_errors(summary, params.endpoint, fault, settings.max_embedding_inputs)
            if not errors:
                errors = self._token_limit_errors(model, summary.tokens, fault, now)
            batch_id = new_batch_id()
            input_copy = store.batches_dir / f"{batch_id}.input.jsonl"
            if not errors:
                _link_or_copy(source.file_path, input_copy)  # survives deletion of the uploaded file
            batch = BatchRecord(
                id=batch_id,
                endpoint=params.endpoint,
                input_file_id=source.id,
                completion_window=params.completion_window,
                metadata=params.metadata,
                model=model,
                created_at=now,
                expires_at=now + settings.completion_window_seconds,
                seq=store.next_seq(),
                requests=summary.requests,
                tokens=summary.tokens,
                input_path=str(input_copy),
                output_expires_seconds=params.output_expires_seconds or settings.file_expiry_seconds,
                line_server_error_rate=store.faults.line_server_error_rate,
                line_timeout_rate=store.faults.line_timeout_rate,
            )
            engine.plan(batch, self._durations(), fault, errors or None)
            store.batches[batch_id] = batch
            stats = store.stats
            stats.batches_created += 1
            stats.batches_by_endpoint[params.endpoint] += 1
            for key, value in (params.metadata or {}).items():
                stats.batches_by_metadata[key][value] += 1
            store.save()
        return self.view(batch_id, now)

    def _token_limit_errors(
        self, model: str | None, tokens: int, fault: BatchFault | None, now: float
    ) -> list[dict[str, Any]]:
        limit = self.store.faults.token_limits.get(model) if model else None
        if fault == BatchFault.TOKEN_LIMIT_EXCEEDED:
            return [token_limit_error(model, limit)]
        if limit is None:
            return []
        enqueued = sum(
            b.tokens
            for b in self.store.batches.values()
            if b.model == model and not b.errors and engine.status_at(b, now) in engine.ENQUEUED
        )
        return [token_limit_error(model, limit)] if enqueued + tokens > limit else []

    def _durations(self) -> engine.Durations:
        s = self.store.settings
        return engine.Durations(
            s.validating_seconds, s.in_progress_seconds, s.finalizing_seconds, s.cancelling_seconds
        )

    # -- read ---------------------------------------------------------------------------------------
    def _get(self, batch_id: str) -> BatchRecord:
        batch = self.store.batches.get(batch_id)
        if batch is None:
            raise not_found("Batch", batch_id, param="batch_id")
        return batch

    def view(self, batch_id: str, now: float | None = None) -> dict[str, Any]:
        """The batch as seen now, writing its result files first if it has just finished."""
        with self.store.lock:
            batch = self._get(batch_id)
            now = self.store.now() if now is None else now
            pending = engine.status_at(batch, now) in engine.WITH_RESULTS and not batch.results_ready
        if pending:
            self._ensure_results(batch)
        with self.store.lock:
            return engine.render(batch, now, self.outcomes(batch))

    def list(self, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        with self.store.lock:
            now = self.store.now()
            ordered = sorted(self.store.batches.values(), key=lambda b: (b.created_at, b.seq), reverse=True)
            page, has_more = paginate(ordered, after, limit, lambda _: True)
        return [self.view(b.id, now) for b in page], has_more

    def outcomes(self, batch: BatchRecord) -> bytearray:
        cached = self._outcomes.get(batch.id)
        if cached is None:
            source = self.store.files.get(batch.input_file_id)
            markers = source.summary.markers if source is not None and source.summary is not None else {}
            cached = line_outcomes(
                batch.requests,
                markers,
                seed=self.store.settings.seed,
                batch_id=batch.id,
                server_error_rate=batch.line_server_error_rate,
                timeout_rate=batch.line_timeout_rate,
            )
            self._outcomes[batch.id] = cached
        return cached

    # -- changes ------------------------------------------------------------------------------------
    def cancel(self, batch_id: str) -> dict[str, Any]:
        with self.store.lock:
            batch, now = self._get(batch_id), self.store.now()
            engine.cancel(batch, now, self.store.settings.cancelling_seconds)
            self.store.stats.cancel_requests += 1
            self.store.save()
        return self.view(batch_id, now)

    def force_complete(self, batch_id: str) -> dict[str, Any]:
        with self.store.lock:
            batch, now = self._get(batch_id), self.store.now()
            engine.force_complete(batch, now)
            self.store.save()
        return self.view(batch_id, now)

    def force_expire(self, batch_id: str) -> dict[str, Any]:
        with self.store.lock:
            batch, now = self._get(batch_id), self.store.now()
            engine.force_expire(batch, now)
            self.store.save()
        return self.view(batch_id, now)

    def reset(self) -> None:
        with self.store.lock:
            self._outcomes.clear()
            self._result_locks.clear()

    # -- results ------------------------------------------------------------------------------------
    def _ensure_results(self, batch: BatchRecord) -> None:
        """Generate the result files once, even when many clients look at the batch at the same moment."""
        with self.store.lock:
            lock = self._result_locks.setdefault(batch.id, threading.Lock())
        with lock:
            if batch.results_ready:
                return
            store = self.store
            with store.lock:
                finished = engine.terminal_time(batch)
                assert finished is not None
                status = engine.status_at(batch, finished)
                executed = engine.processed_at(batch, finished)
                outcomes = self.outcomes(batch)
                started = batch.schedule.in_progress_at
            output_id, error_id = new_file_id(), new_file_id()
            files = write_results(
                batch_id=batch.id,
                endpoint=batch.endpoint,
                input_path=Path(batch.input_path),
                outcomes=outcomes,
                executed=executed,
                unrun_status=status,
                created=int(started if started is not None else finished),
                output_path=store.spool_dir / f"{output_id}.part",
                error_path=store.spool_dir / f"{error_id}.part",
            )
            with store.lock:
                batch.output_file_id = self._register(
                    files.output_path, output_id, files.output_lines, batch, "output"
                )
                batch.error_file_id = self._register(
                    files.error_path, error_id, files.error_lines, batch, "error"
                )
                batch.usage = files.usage
                batch.results_ready = True
                Path(batch.input_path).unlink(missing_ok=True)
                store.save()

    def _register(self, path: Path, file_id: str, lines: int, batch: BatchRecord, kind: str) -> str | None:
        if lines == 0:
            path.unlink(missing_ok=True)  # OpenAI leaves the id null when there is nothing to report
            return None
        finished = engine.terminal_time(batch)
        record = self.store.add_file(
            path,
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            size=path.stat().st_size,
            expires_seconds=batch.output_expires_seconds,
            created_at=int(finished if finished is not None else self.store.now()),
            file_id=file_id,
        )
        return record.id


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
