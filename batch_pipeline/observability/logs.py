"""Logging for every process: ``LOG_FORMAT=text`` (one readable line) or ``json`` (one object a line).

Each line carries, where known, the ids of what it is about (``request_id``, ``custom_id``, ``batch_id``,
``run_id``): set for a block with ``log_context(...)`` (a context variable, so concurrent requests on one
event loop keep theirs apart) or given per call as ``extra={...}``. Secrets never reach the output: the
values of the secret settings, URL passwords and credential-like query values are masked in each
message and traceback, whatever logger produced it (the ids and access fields are ours: the request id
is checked, the path has no query string).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from batch_pipeline.config import Settings
from batch_pipeline.redaction import MASK, masked_url

# The ids a line may carry, in the order they are shown.
CONTEXT_FIELDS = ("request_id", "custom_id", "batch_id", "run_id")
# Per-call fields the access log adds (``extra=``): JSON keys (in text, its message says them).
EXTRA_FIELDS = ("method", "path", "status", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: ContextVar[Mapping[str, Any]] = ContextVar("batchman_log_context", default=MappingProxyType({}))
# A URL anywhere in a message: its password and credential-like query values are masked.
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
# A credential-like query parameter in a path without a scheme (``/x?token=...``), as a server logs it.
_QUERY_SECRET = re.compile(
    r"([?&][^=&\s\"']*(?:token|key|secret|sig|pass|auth|credential|session|code)[^=&\s\"']*=)[^&\s\"'#]+",
    re.IGNORECASE,
)
# Loggers that install handlers of their own (uvicorn's default config; Dagster's CLI, in the code
# server and run workers, where our code loads after it): they go through ours instead.
_OWN_HANDLER_LOGGERS = ("uvicorn", "uvicorn.error", "dagster", "dagster-webserver", "dagit")
# uvicorn's access lines: ours (intake_api/request_log.py) replace them.
_REPLACED_LOGGERS = ("uvicorn.access",)
_HANDLER_NAME = "batchman"


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Lines logged inside the block carry ``fields`` (e.g. ``batch_id=7``) besides the outer ones."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> Mapping[str, Any]:
    return _context.get()


def set_context(**fields: Any) -> object:
    """Like ``log_context`` for code that cannot wrap a block (ASGI middleware); undo with ``reset``."""
    return _context.set({**_context.get(), **fields})


def reset_context(token: object) -> None:
    _context.reset(token)  # type: ignore[arg-type]


class Scrubber:
    """Masks secrets in a finished line: known secret values first, then passwords/tokens in URLs."""

    def __init__(self, secrets: list[str]) -> None:
        # Longest first, so that a secret holding another is masked whole; short ones would mask noise.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.secrets:
            if value in text:
                text = text.replace(value, MASK)
        if "://" in text:
            text = _URL.sub(lambda m: masked_url(m.group(0)), text)
        if "=" in text:
            text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
        return text


def _fields(record: logging.LogRecord, names: tuple[str, ...] = (*CONTEXT_FIELDS, *EXTRA_FIELDS)) -> dict:
    found = {k: v for k, v in _context.get().items() if k in CONTEXT_FIELDS}
    meta = getattr(record, "dagster_meta", None)  # a line of a Dagster run: it names the run
    if isinstance(meta, dict):
        found["run_id"] = meta.get("run_id") or found.get("run_id")
        found["batch_id"] = (meta.get("job_tags") or {}).get("batch_id") or found.get("batch_id")
        found = {k: v for k, v in found.items() if v is not None}
    for name in names:
        value = getattr(record, name, None)
        if value is not None:
            found[name] = value
    return found


class StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a line is written, not when it was
    made: a test runner swaps ``sys.stderr`` per test and closes the old one (``setStream`` still pins
    a stream of one's choosing)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)
        self._pinned: Any = None

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return self._pinned if self._pinned is not None else sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        self._pinned = value


class JsonFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.scrub(self.formatException(record.exc_info))
        # default=str: an id or status of any type is written, never a crash in the logging call.
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        text = self.scrub(super().format(record))  # the message and any traceback
        fields = _fields(record, CONTEXT_FIELDS)  # the access log's own fields are in its message
        if fields:
            text += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return text


def secret_values(settings: Settings | None) -> list[str]:
    """The values of every secret setting, and the database URLs' passwords."""
    if settings is None:
        return []
    found = []
    for value in settings.model_dump().values():
        if hasattr(value, "get_secret_value") and value.get_secret_value():
            found.append(value.get_secret_value())
    for url in (settings.database_url, settings.dagster_database_url, settings.rabbitmq_url):
        password = _password(url)
        if password:
            found.append(password)
    return found


def _password(url: str | None) -> str | None:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        return None
    return unquote(password) if password else None


def configure_logging(
    settings: Settings | None, log_format: str | None = None, access_log: bool = False
) -> None:
    """One handler on the root logger, in ``LOG_FORMAT``; safe to call again (it replaces its own).
    ``access_log``: keep uvicorn's access lines (the simulator's; the API writes its own)."""
    fmt = log_format or (settings.log_format if settings else "text")
    scrub = Scrubber(secret_values(settings))
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter(scrub) if fmt == "json" else TextFormatter(scrub))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:  # ours only: a test runner's capture handlers stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level if settings else "INFO")
    for name in _OWN_HANDLER_LOGGERS:
        own = logging.getLogger(name)
        own.handlers.clear()
        own.propagate = True
    for name in _REPLACED_LOGGERS:
        logging.getLogger(name).disabled = not access_log
