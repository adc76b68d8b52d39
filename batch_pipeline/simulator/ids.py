"""Object ids shaped like OpenAI's: ``file-…``, ``batch_…``, ``batch_req_…``, ``req_…``."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def _random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_file_id() -> str:
    return f"file-{_random_token(22)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"


def digest(*parts: str) -> str:
    """A stable hex digest of the parts; the source of every deterministic id and body."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def derived_id(prefix: str, *parts: str, length: int = 32) -> str:
    return f"{prefix}{digest(*parts)[:length]}"
