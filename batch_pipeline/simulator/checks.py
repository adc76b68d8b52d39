"""Would the real endpoint refuse this request body? One check per batch endpoint.

Run on every line at upload time (so request counts know about doomed lines from the start) and again
before a reply is built. A refused line ends up in the error file as an HTTP 400 line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .textgen import LineRejected, require

VIDEO_SECONDS = ("4", "8", "12")
VIDEO_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")


def _chat(body: dict[str, Any]) -> None:
    require(body, "model", str)
    require(body, "messages", list)


def _completions(body: dict[str, Any]) -> None:
    require(body, "model", str)
    require(body, "prompt", (str, list))


def _responses(body: dict[str, Any]) -> None:
    require(body, "model", str)


def _embeddings(body: dict[str, Any]) -> None:
    require(body, "model", str)
    require(body, "input", (str, list))
    dimensions = body.get("dimensions", 8)
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= 3072:
        raise LineRejected("'dimensions' must be an integer between 1 and 3072.", param="dimensions")


def _moderations(body: dict[str, Any]) -> None:
    require(body, "input", (str, list))


def _images(body: dict[str, Any]) -> None:
    require(body, "prompt", str)
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise LineRejected("'n' must be an integer between 1 and 10.", param="n")


def _image_edits(body: dict[str, Any]) -> None:
    _images(body)
    if body.get("image") is None and body.get("images") is None:
        raise LineRejected("Missing required parameter: 'image'.", param="image")


def _videos(body: dict[str, Any]) -> None:
    require(body, "prompt", str)
    if str(body.get("seconds", "4")) not in VIDEO_SECONDS:
        raise LineRejected(f"'seconds' must be one of {', '.join(VIDEO_SECONDS)}.", param="seconds")
    if body.get("size", "720x1280") not in VIDEO_SIZES:
        raise LineRejected(f"'size' must be one of {', '.join(VIDEO_SIZES)}.", param="size")


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completions,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/moderations": _moderations,
    "/v1/images/generations": _images,
    "/v1/images/edits": _image_edits,
    "/v1/videos": _videos,
}


def refusal(endpoint: str, body: dict[str, Any]) -> LineRejected | None:
    """The 4xx the endpoint would answer with, or ``None`` when the body is acceptable."""
    check = CHECKS.get(endpoint)
    if check is None:
        return LineRejected(f"Invalid URL (POST {endpoint})", param="url", status=404)
    try:
        check(body)
    except LineRejected as exc:
        return exc
    return None
