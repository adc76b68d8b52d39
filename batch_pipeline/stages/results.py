"""The results stage: read OpenAI's output and error files, store every line, requeue what is retryable.

Classification of one line (``{id, custom_id, response, error}``):
- success: ``error`` is null and ``response.status_code`` is 2xx;
- retry: ``server_error`` (5xx), ``request_timeout``, ``batch_expired``, and ``batch_cancelled`` when
  the batch expired rather than being cancelled by us; such requests go back to the queue (into a
  new batch) up to ``OPENAI_MAX_RESUBMITS`` times, after which their error is delivered;
- failed: everything else; the line (which carries the error) is delivered like a success.

Lines are streamed from disk into a staging table with COPY and applied with set-based UPDATEs, all
in one transaction together with the batch's state change, so a crash leaves nothing half-applied
and re-running a finished results run changes nothing.

Every request of the batch leaves with an outcome: a line that cannot be read (a file cut short) and a
result file OpenAI no longer has (404) count as "no line returned", so those requests go again (or, their
resubmissions spent, get a ``resubmit_limit_reached`` error line). Several lines for one ``custom_id``
store one (a success first); lines for ids not in the batch are ignored.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import orjson
import psycopg
from psycopg import sql

from batch_pipeline import openai_client as oai
from batch_pipeline.db import Connect
from batch_pipeline.store import batches
from batch_pipeline.store import results as store
from batch_pipeline.store.transitions import transition

log = logging.getLogger(__name__)


RETRY_CODES = frozenset({"server_error", "request_timeout", "batch_expired"})


def classify(line: dict[str, Any], batch_expired: bool) -> tuple[str, str | None]:
    """('ok' | 'retry' | 'failed', error message or None) for one output/error line."""
    error = line.get("error")
    response = line.get("response") or {}
    status = response.get("status_code")
    if not error and isinstance(status, int) and 200 <= status < 300:
        return "ok", None
    if error:
        code, message = error.get("code"), error.get("message") or str(error)
    else:
        body_error = (response.get("body") or {}).get("error") or {}
        code = body_error.get("code") or body_error.get("type")
        message = body_error.get("message") or f"HTTP {status}"
        if isinstance(status, int) and status >= 500:
            code = "server_error"
    if code in RETRY_CODES or (code == "batch_cancelled" and batch_expired):
        return "retry", f"{code}: {message}"
    return "failed", f"{code}: {message}" if code else message


def synthetic_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """An error line in OpenAI's shape for requests OpenAI never answered (e.g. a failed batch)."""
    return {"id": None, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def _iter_file(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Each usable line, parsed and as its original text (stored as is: no re-serialisation)."""
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("skipping a malformed result line: %.200r", raw)
                continue
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                yield line, _jsonb_safe(raw.decode().strip())


def _jsonb_safe(text: str) -> str:
    # Postgres jsonb refuses the \u0000 escape, which model output can contain; one such line must
    # not fail the whole batch's results.
    return text.replace("\\u0000", "\\ufffd") if "\\u0000" in text else text


def _download(client: openai.OpenAI, batch: dict, workdir: Path) -> tuple[list[Path], list[str]]:
    """Both result files on local disk, before any database transaction is opened; and the ids of
    those OpenAI no longer has (their lines are lost: the requests count as unanswered). Any other
    failure raises, with nothing stored yet."""
    paths, missing = [], []
    for file_id in (batch["openai_output_file_id"], batch["openai_error_file_id"]):
        if not file_id:
            continue
        try:
            paths.append(oai.download_file(client, file_id, workdir / f"{file_id}.jsonl"))
        except openai.NotFoundError:
            log.warning(
                "batch %s: result file %s is gone at OpenAI; its requests go again", batch["id"], file_id
            )
            missing.append(file_id)
    return paths, missing


def _staged_from_files(paths: list[Path], batch: dict) -> Iterator[store.StagedLine]:
    expired = batch["openai_status"] == "expired"
    for path in paths:
        for line, text in _iter_file(path):
            kind, message = classify(line, expired)
            yield line["custom_id"], text, kind, message


def _staged_from_failure(conn: psycopg.Connection, batch: dict) -> Iterator[store.StagedLine]:
    """A failed batch: lines named by validation errors fail; the rest go again (or all fail)."""
    errors = batch["last_openai_error"] or []
    by_line = {e["line"]: e for e in errors if isinstance(e.get("line"), int)}
    requests = store.processing_in_order(conn, batch["id"])
    first = errors[0] if errors else {"code": "batch_failed", "message": batch["error_msg"] or "batch failed"}
    for number, row in enumerate(requests, start=1):  # OpenAI numbers input lines from 1
        if by_line:
            err = by_line.get(number)
            if err is None:
                yield row["custom_id"], None, "retry", None
                continue
        else:
            err = first
        line = synthetic_line(row["custom_id"], err.get("code") or "batch_failed", err.get("message") or "")
        yield (
            row["custom_id"],
            orjson.dumps(line).decode(),
            "failed",
            f"{line['error']['code']}: {line['error']['message']}",
        )


def ingest_results(
    connect: Connect, client: openai.OpenAI, batch_id: int, max_resubmits: int
) -> dict[str, Any]:
    """Store the results of one finished OpenAI batch. Idempotent: a finished batch is skipped."""
    with connect() as conn:
        batch = transition(conn, batch_id, ("openai_completed",), "downloading", "results run started")
        if batch is None:
            batch = batches.get_batch(conn, batch_id)
        conn.commit()
    if batch is None or batch["state"] != "downloading":
        return {"outcome": "skipped", "state": batch and batch["state"]}

    with tempfile.TemporaryDirectory(prefix="batchman-results-") as tmp:
        paths, missing = (
            ([], []) if batch["openai_status"] == "failed" else _download(client, batch, Path(tmp))
        )
        return _store(connect, batch, paths, max_resubmits, missing)


def _store(
    connect: Connect, batch: dict, paths: list[Path], max_resubmits: int, missing: Sequence[str] = ()
) -> dict[str, Any]:
    batch_id = batch["id"]
    gone = f" (result files gone at OpenAI: {', '.join(missing)})" if missing else ""
    with connect() as conn:
        if batch["openai_status"] == "failed":
            # Materialised first: the connection cannot run queries while the COPY below is open.
            rows: Iterable = list(_staged_from_failure(conn, batch))
        else:
            rows = _staged_from_files(paths, batch)
        kinds = store.stage(conn, rows)
        # The sort behind the dedupe is skipped when every custom_id came once (the usual case).
        if kinds["duplicates"] and store.dedupe_staged(conn):
            log.warning(
                "batch %s: OpenAI returned several lines for some requests; one each is kept", batch_id
            )
        resubmitted, processed = store.apply_staged(conn, batch_id, max_resubmits, kinds["retry"] > 0)
        store.usage_from_lines(conn, batch_id)  # only when OpenAI reported no usage for the batch
        # Requests OpenAI returned no line for: go again unless the batch was cancelled by us. Always
        # scanned, even when the lines match request_count: a request that joined the batch after its
        # file was built (which the accounting check reports) must still go again, not wait for ever.
        leftover_kind = "failed" if batch["openai_status"] == "cancelled" and not _expired(batch) else "retry"
        leftovers = _apply_leftovers(conn, batch, leftover_kind, max_resubmits)
        resubmitted += leftovers["resubmitted"]
        processed += leftovers["processed"]
        summary = {"processed": processed, "resubmitted": resubmitted}
        # Rows stored above are deliverable (and locked by this transaction): no need to count them.
        deliverable = processed > 0 or store.count_deliverable(conn, batch_id)
        if deliverable:
            transition(
                conn,
                batch_id,
                ("downloading",),
                "ready_to_deliver",
                f"{processed} results stored{gone}",
                resubmitted_count=resubmitted,
            )
        else:
            transition(
                conn,
                batch_id,
                ("downloading",),
                "resubmitted",
                f"all {resubmitted} requests resubmitted{gone}",
                resubmitted_count=resubmitted,
                completed_at=sql.SQL("now()"),
            )
        conn.commit()
    return {"outcome": "stored", **summary}


def _expired(batch: dict) -> bool:
    return batch["openai_status"] == "expired"


def _apply_leftovers(conn: psycopg.Connection, batch: dict, kind: str, max_resubmits: int) -> dict[str, int]:
    resubmitted = 0
    if kind == "retry":
        resubmitted = store.requeue_leftovers(conn, batch["id"], max_resubmits)
        code, message = "resubmit_limit_reached", f"no result after {max_resubmits} resubmissions"
    else:
        code, message = "batch_cancelled", "the batch was cancelled before this request ran"
    processed = store.fail_leftovers(conn, batch["id"], code, message)
    return {"resubmitted": resubmitted, "processed": processed}
