"""Streaming ``multipart/form-data`` receiver for ``POST /v1/files``.

The file part goes straight from the socket to a spool file in ~1 MB steps while the JSONL validator reads
the same bytes, so memory stays flat whatever the upload size. Parsing and disk writes run in a worker
thread to keep the event loop free for other clients.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .errors import OpenAIError, bad_request
from .jsonl import JsonlValidator

HARD_MAX_FILE_BYTES = 512 * 1000 * 1000  # OpenAI's cap for any uploaded file
_MAX_FIELD_BYTES = 64 * 1024
_FEED_BYTES = 1024 * 1024


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    validator: JsonlValidator | None = None


class _Sink:
    """python-multipart callbacks that write the file part to disk and validate it on the fly."""

    def __init__(self, boundary: bytes, spool_dir: Path, max_batch_bytes: int, max_requests: int) -> None:
        self.upload = Upload()
        self.error: OpenAIError | None = None
        self._spool_dir = spool_dir
        self._max_batch_bytes = max_batch_bytes
        self._max_requests = max_requests
        self._file: Any = None
        self._in_file = False
        self._name = ""
        self._field = bytearray()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }
        self.parser = MultipartParser(boundary, callbacks)

    # -- driving ------------------------------------------------------------------------------------
    def feed(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                self.parser.write(chunk)
        except FormParserError:
            self._set_error(bad_request("The multipart body could not be parsed.", param="file"))
            raise _Malformed from None

    def finish(self) -> None:
        try:
            self.parser.finalize()
        except FormParserError:
            self._set_error(bad_request("The multipart body could not be parsed.", param="file"))
        self._close_file()
        if self.upload.validator is not None and self.error is None:
            self.upload.validator.finish()

    def discard(self) -> None:
        self._close_file()
        if self.upload.path is not None:
            self.upload.path.unlink(missing_ok=True)
            self.upload.path = None

    # -- callbacks ----------------------------------------------------------------------------------
    def _set_error(self, error: OpenAIError) -> None:
        if self.error is None:
            self.error = error
        self.discard()  # keep draining the request, but stop writing it anywhere

    def _part_begin(self) -> None:
        self._disposition, self._name, self._in_file = b"", "", False
        self._field.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        self._in_file = True
        if self.upload.filename is not None:
            self._set_error(bad_request("Only one file may be uploaded per request.", param="file"))
            return
        raw_name = options[b"filename"].decode("utf-8", "replace")
        self.upload.filename = os.path.basename(raw_name.replace("\\", "/")) or "upload"
        if self.error is not None or self._name != "file":
            return
        self.upload.path = self._spool_dir / f"upload-{secrets.token_hex(8)}.part"
        self._file = open(self.upload.path, "wb")  # noqa: SIM115 - closed in finish()/discard()
        if self.upload.fields.get("purpose", "batch") == "batch":
            # purpose usually precedes the file; when it does not, validate anyway and decide later.
            self.upload.validator = JsonlValidator(self._max_requests)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            self._field += data[start:end]
            if len(self._field) > _MAX_FIELD_BYTES:
                self._set_error(bad_request(f"Form field {self._name!r} is too large.", param=self._name))
            return
        if self._file is None:
            return
        chunk = data[start:end]
        self.upload.size += len(chunk)
        limit = self._max_batch_bytes if self.upload.fields.get("purpose") == "batch" else HARD_MAX_FILE_BYTES
        if self.upload.size > limit:
            self._set_error(too_large(limit))
            return
        self._file.write(chunk)
        validator = self.upload.validator
        if validator is not None:
            validator.feed(chunk)
            if validator.error is not None and self.upload.fields.get("purpose") == "batch":
                self._set_error(validator.error)  # doomed: stop writing, just drain the rest

    def _part_end(self) -> None:
        if not self._in_file and self._name:
            self.upload.fields[self._name] = self._field.decode("utf-8", "replace")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Malformed(Exception):
    pass


def too_large(limit: int) -> OpenAIError:
    return bad_request(f"File is too large: the limit is {limit} bytes.", param="file", code="file_too_large")


async def receive_upload(
    request: Request, spool_dir: Path, *, max_batch_bytes: int, max_requests: int
) -> Upload:
    """Stream a multipart upload to ``spool_dir``; raise an OpenAI-style 400 for anything invalid."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise bad_request("Uploads must be sent as multipart/form-data.", param="file")
    sink = _Sink(params[b"boundary"], spool_dir, max_batch_bytes, max_requests)
    pending: list[bytes] = []
    pending_bytes = 0
    try:
        async for chunk in request.stream():
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _FEED_BYTES:
                await run_in_threadpool(sink.feed, pending)
                pending, pending_bytes = [], 0
        await run_in_threadpool(sink.feed, pending)
        await run_in_threadpool(sink.finish)
    except _Malformed:
        pass
    except BaseException:
        sink.discard()
        raise
    if sink.error is not None:
        sink.discard()
        raise sink.error
    return sink.upload
