"""Secrets a client gives us for its receiver, and how they are shown: never in full.

A webhook receiver may need credentials. The clean way is the ``headers`` object of a webhook
``delivery_config`` (names from ``SECRET_HEADER_NAMES``); many receivers still take a token in the URL's
query string. Both are stored once, on the request row, and sent with every attempt. Everything that
shows a delivery config to a person (API responses, logs) goes through ``masked_delivery_config``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Header names a delivery_config may set, lower-cased. An allowlist, so that no client can set a header
# the signature, idempotency or framing depends on (content-type, idempotency-key, webhook-*, host).
SECRET_HEADER_NAMES = frozenset(
    {"authorization", "x-api-key", "api-key", "x-auth-token", "x-webhook-token", "x-webhook-secret"}
)
MAX_HEADER_VALUE_BYTES = 1024
MASK = "***"

# Query parameter names that usually carry a credential (token=, api_key=, sig=, X-Amz-Signature=, ...).
_SECRET_PARAM = re.compile(r"token|key|secret|sig|pass|auth|credential|session|code", re.IGNORECASE)
# Visible ASCII, space and tab: what an HTTP field value may hold without obs-text; no CR/LF (header
# injection) and no NUL.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


def header_errors(headers: Any) -> list[tuple[str, str]]:
    """``(detail, key)`` for each problem with a delivery_config ``headers`` object; key is the header
    name, or "" for the object itself."""
    if not isinstance(headers, dict):
        return [("headers must be an object of header names to string values", "")]
    problems = []
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if lower not in SECRET_HEADER_NAMES:
            allowed = ", ".join(sorted(SECRET_HEADER_NAMES))
            problems.append((f"header {name!r} is not allowed; allowed (any case): {allowed}", name))
        elif lower in seen:
            problems.append((f"header {name!r} is given twice", name))
        elif not isinstance(value, str) or not value:
            problems.append(("header values must be non-empty strings", name))
        elif len(value) > MAX_HEADER_VALUE_BYTES or not _HEADER_VALUE.fullmatch(value):
            problems.append(
                (
                    f"header values must be at most {MAX_HEADER_VALUE_BYTES} printable ASCII characters",
                    name,
                )
            )
        seen.add(lower)
    return problems


def masked_url(url: str) -> str:
    """The URL with its password and every credential-like query value replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_SECRET_PARAM.search(k) for k, _ in pairs):
                query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL we can take apart: show none of it
        return MASK


def masked_delivery_config(cfg: Any) -> Any:
    """A delivery config fit to show: header values and URL secrets masked; anything else as it is."""
    if not isinstance(cfg, dict) or cfg.get("type") != "webhook":
        return cfg
    shown = dict(cfg)
    if isinstance(shown.get("webhook_url"), str):
        shown["webhook_url"] = masked_url(shown["webhook_url"])
    if isinstance(shown.get("headers"), dict):
        shown["headers"] = dict.fromkeys(shown["headers"], MASK)
    return shown


def secret_values(cfg: Any) -> list[str]:
    """The credential strings in a webhook delivery config: header values, the URL's password and
    credential-like query values (raw and percent-decoded)."""
    if not isinstance(cfg, dict):
        return []
    found = [v for v in (cfg.get("headers") or {}).values() if isinstance(v, str)]
    url = cfg.get("webhook_url")
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            if parts.password:
                found.append(parts.password)
            for raw in parts.query.split("&"):
                name, _, value = raw.partition("=")
                if value and _SECRET_PARAM.search(name):
                    found.append(value)
                    found.extend(v for k, v in parse_qsl(raw) if v != value)
        except ValueError:
            found.append(url)
    # Short values would blank out unrelated text; longest first so no partial mask is left behind.
    return sorted({v for v in found if len(v) >= 4}, key=len, reverse=True)


def scrubbed(text: str, secrets: list[str]) -> str:
    """``text`` (an error message, a receiver's reply) with each secret replaced by ``***``."""
    for value in secrets:
        if value in text:
            text = text.replace(value, MASK)
    return text
