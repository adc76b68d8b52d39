"""The OpenAI calls the pipeline makes, over the official SDK, with crash-safe reconciliation.

Every remote object we create is findable again after a crash: input files by their file name
(``batchman-batch-<id>.jsonl``), batches by our id in ``metadata``. So a re-run adopts what exists
instead of creating (and paying for) it twice.

The two calls that create something (``files.create``, ``batches.create``) go out once: the SDK would
retry them after a timeout or a dropped connection with no idempotency key, creating a second file or
a second (paid) batch nobody records. Their failures reach the caller, whose retry looks first.

Every HTTP call a client of ``sync_client``/``async_client`` makes (SDK retries included) is timed and
counted per operation and outcome in this process (``openai_call_figures.RECORDER``).
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
from openai.types import Batch, FileObject

from batch_pipeline.config import Settings
from batch_pipeline.openai_call_figures import RECORDER, CallRecorder, operation_of, outcome_of

# Our id in OpenAI batch metadata, and the prefix of our input file names.
METADATA_KEY = "batchman_batch_id"
FILE_PREFIX = "batchman-batch-"
# How far back reconciliation looks (newest first); more than any plausible crash window.
RECONCILE_PAGES = 10

# The simulator accepts any bearer token; this one is sent when no OPENAI_API_KEY is configured.
SIM_KEY_PLACEHOLDER = "sk-simulator"
# The pipeline's calls: uploads of up to 200 MB take a while. The SDK retries connection errors, 408,
# 409, 429 and 5xx with backoff before we see them, except for the calls that create something (see
# ``_once``).
PIPELINE_TIMEOUT_SECONDS = 120.0
PIPELINE_MAX_RETRIES = 3


def _once(client: openai.OpenAI) -> openai.OpenAI:
    """The client without SDK retries, for a call that must not be repeated blindly (it shares the
    connection pool; only the retry count differs)."""
    return client.with_options(max_retries=0)


def client_options(
    settings: Settings, timeout: float = PIPELINE_TIMEOUT_SECONDS, max_retries: int = PIPELINE_MAX_RETRIES
) -> dict[str, Any]:
    """Keyword arguments for ``openai.OpenAI`` or ``openai.AsyncOpenAI``: OpenAI or the simulator."""
    real = settings.openai_api_key is not None and not settings.simulator_mode
    key = settings.openai_api_key.get_secret_value() if real else SIM_KEY_PLACEHOLDER
    return {
        "base_url": settings.openai_client_base_url,
        "api_key": key,
        "timeout": timeout,
        "max_retries": max_retries,
    }


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process for every OpenAI client: each new client would otherwise load the
    system's CA bundle again (64 ms of CPU each, and a run makes several clients)."""
    return httpx2.create_ssl_context()


def sync_client(
    settings: Settings,
    timeout: float = PIPELINE_TIMEOUT_SECONDS,
    max_retries: int = PIPELINE_MAX_RETRIES,
    recorder: CallRecorder | None = None,
) -> openai.OpenAI:
    """An ``openai.OpenAI`` whose calls are counted and timed (in ``RECORDER`` unless told otherwise)."""
    http_client = _TimedClient(recorder or RECORDER, timeout=timeout, verify=shared_ssl_context())
    return openai.OpenAI(**client_options(settings, timeout, max_retries), http_client=http_client)


def async_client(
    settings: Settings,
    timeout: float = PIPELINE_TIMEOUT_SECONDS,
    max_retries: int = PIPELINE_MAX_RETRIES,
    recorder: CallRecorder | None = None,
) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` whose calls are counted and timed (in ``RECORDER`` unless told otherwise)."""
    http_client = _TimedAsyncClient(recorder or RECORDER, timeout=timeout, verify=shared_ssl_context())
    return openai.AsyncOpenAI(**client_options(settings, timeout, max_retries), http_client=http_client)


def _record(
    recorder: CallRecorder, request: httpx2.Request, started: float, status: int | None, exc: Exception | None
) -> None:
    # The time to the answer's headers: a streamed download's body is read by the caller afterwards.
    seconds = time.perf_counter() - started
    recorder.record(operation_of(request.method, request.url.path), outcome_of(status, exc), seconds)


class _TimedClient(openai.DefaultHttpxClient):
    def __init__(self, recorder: CallRecorder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._recorder = recorder

    def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        started = time.perf_counter()
        try:
            response = super().send(request, **kwargs)
        except Exception as exc:
            _record(self._recorder, request, started, None, exc)
            raise
        _record(self._recorder, request, started, response.status_code, None)
        return response


class _TimedAsyncClient(openai.DefaultAsyncHttpxClient):
    def __init__(self, recorder: CallRecorder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._recorder = recorder

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        started = time.perf_counter()
        try:
            response = await super().send(request, **kwargs)
        except Exception as exc:  # a cancelled call (BaseException) is nobody's outcome: not counted
            _record(self._recorder, request, started, None, exc)
            raise
        _record(self._recorder, request, started, response.status_code, None)
        return response


# Errors worth retrying (the SDK already retried them a few times): the op's RetryPolicy takes over.
TRANSIENT_ERRORS = (
    openai.APIConnectionError,
    openai.APITimeoutError,
    openai.RateLimitError,
    openai.InternalServerError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, openai.APIStatusError) and (
        exc.status_code in (408, 409, 429) or exc.status_code >= 500
    )


def input_file_name(batch_id: int) -> str:
    return f"{FILE_PREFIX}{batch_id}.jsonl"


def find_input_file(client: openai.OpenAI, batch_id: int) -> FileObject | None:
    """An input file uploaded for this batch before a crash, if OpenAI still has it."""
    name = input_file_name(batch_id)
    page = client.files.list(purpose="batch", limit=1000)
    for _ in range(RECONCILE_PAGES):
        for f in page.data:
            if f.filename == name and f.status != "error":
                return f
        if not page.has_next_page():
            break
        page = page.get_next_page()
    return None


def upload_input_file(client: openai.OpenAI, batch_id: int, path: Path) -> FileObject:
    """Upload the batch's JSONL, streamed from disk (the SDK passes an open file to httpx as is)."""
    with path.open("rb") as fh:
        return _once(client).files.create(
            file=(input_file_name(batch_id), fh, "application/jsonl"), purpose="batch"
        )


# A batch of ours that OpenAI ended this way is usually from an earlier attempt (e.g. before a
# token-limit backoff), never one a crash left running: adopting it would skip the new attempt. It is
# this attempt's own only when it names the same input file and attempt number: a batch that failed
# validation at once, whose create answer was lost.
NOT_ADOPTABLE = frozenset({"failed", "expired", "cancelling", "cancelled"})
ATTEMPT_KEY = "batchman_attempt"


def find_batches(
    client: openai.OpenAI, batch_id: int, input_file_id: str | None = None, attempt: int | None = None
) -> list[Batch]:
    """Every OpenAI batch created for our batch (matched by metadata) by this attempt or still live,
    oldest first. More than one means a create call was repeated (e.g. by an SDK retry after a lost
    answer). Without ``input_file_id`` and ``attempt``, live ones only."""
    found: list[Batch] = []
    page = client.batches.list(limit=100)
    for _ in range(RECONCILE_PAGES):
        for b in page.data:
            meta = b.metadata or {}
            if meta.get(METADATA_KEY) != str(batch_id):
                continue
            this_attempt = (
                attempt is not None
                and b.input_file_id == input_file_id
                and meta.get(ATTEMPT_KEY) == str(attempt)
            )
            if this_attempt or b.status not in NOT_ADOPTABLE:
                found.append(b)
        if not page.has_next_page():
            break
        page = page.get_next_page()
    return sorted(reversed(found), key=lambda b: b.created_at)  # listed newest first; stable sort


def find_batch(client: openai.OpenAI, batch_id: int) -> Batch | None:
    """An OpenAI batch created for our batch before a crash (the oldest, if several), if any."""
    found = find_batches(client, batch_id)
    return found[0] if found else None


def create_batch(
    client: openai.OpenAI, batch_id: int, input_file_id: str, endpoint: str, attempt: int = 0
) -> Batch:
    return _once(client).batches.create(
        input_file_id=input_file_id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={METADATA_KEY: str(batch_id), ATTEMPT_KEY: str(attempt)},
    )


def download_file(client: openai.OpenAI, file_id: str, dest: Path) -> Path:
    """Stream a file's content to ``dest`` in chunks: output files can be hundreds of MB."""
    with client.files.with_streaming_response.content(file_id) as response, dest.open("wb") as out:
        for chunk in response.iter_bytes(chunk_size=1 << 20):
            out.write(chunk)
    return dest


def delete_file(client: openai.OpenAI, file_id: str) -> bool:
    """Delete a file; True if it is gone (already deleted counts)."""
    with contextlib.suppress(openai.NotFoundError):
        client.files.delete(file_id)
    return True


def cancel_batch(client: openai.OpenAI, openai_batch_id: str) -> Batch | None:
    try:
        return client.batches.cancel(openai_batch_id)
    except openai.NotFoundError:
        return None


def batch_errors(batch: Batch) -> list[dict[str, Any]]:
    """The batch-level errors (validation failures, token_limit_exceeded) as plain dicts."""
    if batch.errors is None or not batch.errors.data:
        return []
    return [e.model_dump() for e in batch.errors.data]


def refusal(exc: openai.APIStatusError) -> tuple[str, str]:
    """(code, "OpenAI <status>: <message>") from an error answer, without the SDK's repeated prefix."""
    body = exc.body if isinstance(exc.body, dict) else {}  # the SDK keeps the "error" object here
    message = body.get("message") or exc.message
    return exc.code or "batch_failed", f"OpenAI {exc.status_code}: {message}"
