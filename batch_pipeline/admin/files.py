"""A batch's input, output or error file, streamed from OpenAI (or the simulator) in chunks.

Never loaded whole: an output file can be hundreds of MB. The database is used only to find the file
id (a pool connection is given back before the download starts). OpenAI keeps the files until the
cleanup stage deletes them (``OPENAI_DELETE_FILES``): after that, and before OpenAI wrote an output or
error file, the file is not available.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import psycopg
from psycopg_pool import AsyncConnectionPool

from batch_pipeline.admin.errors import BatchNotFound, FileNotAvailable, OpenAICallFailed
from batch_pipeline.config import Settings
from batch_pipeline.store.batch_files import batch_file_ids

if TYPE_CHECKING:
    import openai

FILE_KINDS = ("input", "output", "error")
CHUNK_BYTES = 64 * 1024
# An operator waits; the SDK retries connection errors, 408, 429 and 5xx this many times.
SDK_MAX_RETRIES = 2
SDK_TIMEOUT_SECONDS = 60.0


async def _file_id(
    conn_or_pool: psycopg.AsyncConnection | AsyncConnectionPool, batch_id: int, kind: str
) -> str:
    if kind not in FILE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FILE_KINDS)}")
    if isinstance(conn_or_pool, AsyncConnectionPool):
        async with conn_or_pool.connection() as conn:
            row = await batch_file_ids(conn, batch_id)
    else:
        row = await batch_file_ids(conn_or_pool, batch_id)
    if row is None:
        raise BatchNotFound(batch_id)
    file_id = row[f"openai_{kind}_file_id"]
    if not file_id:
        raise FileNotAvailable(f"Batch {batch_id} has no {kind} file (it is in state {row['state']})")
    return file_id


def _client(settings: Settings) -> openai.AsyncOpenAI:
    from batch_pipeline import openai_client as oai  # imports the SDK, slow: only when a file is asked for

    return oai.async_client(settings, timeout=SDK_TIMEOUT_SECONDS, max_retries=SDK_MAX_RETRIES)


async def batch_file_stream(
    settings: Settings,
    conn_or_pool: psycopg.AsyncConnection | AsyncConnectionPool,
    batch_id: int,
    kind: str,
) -> AsyncIterator[bytes]:
    """The file's bytes in chunks. The first item is ``b""``, yielded once the file is found and
    OpenAI answered: await it before sending headers, so BatchNotFound, FileNotAvailable or
    OpenAICallFailed become an error status instead of a broken download (``open_batch_file``)."""
    import openai

    file_id = await _file_id(conn_or_pool, batch_id, kind)
    async with _client(settings) as client:
        try:
            async with client.files.with_streaming_response.content(file_id) as response:
                yield b""
                async for chunk in response.iter_bytes(CHUNK_BYTES):
                    yield chunk
        except openai.NotFoundError:
            raise FileNotAvailable(
                f"The {kind} file of batch {batch_id} ({file_id}) is no longer at OpenAI"
            ) from None
        except openai.APIStatusError as exc:
            raise OpenAICallFailed(
                f"OpenAI refused the {kind} file of batch {batch_id} ({exc.status_code}): {exc.message}"
            ) from exc
        except openai.APIError as exc:
            raise OpenAICallFailed(f"OpenAI could not be reached for file {file_id}: {exc}") from exc


async def open_batch_file(
    settings: Settings,
    conn_or_pool: psycopg.AsyncConnection | AsyncConnectionPool,
    batch_id: int,
    kind: str,
) -> AsyncIterator[bytes]:
    """``batch_file_stream`` past its first step: the errors are raised here, the bytes follow."""
    stream = batch_file_stream(settings, conn_or_pool, batch_id, kind)
    await anext(stream)
    return stream


def download_name(batch_id: int, kind: str) -> str:
    return f"batch-{batch_id}-{kind}.jsonl"
