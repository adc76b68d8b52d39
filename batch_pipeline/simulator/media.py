"""Deterministic bodies for the image and video endpoints: a tiny PNG per image, a finished video job."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

from .ids import derived_id
from .textgen import count_tokens

_IMAGE_FORMATS = ("png", "webp", "jpeg")
_IMAGE_QUALITIES = ("low", "medium", "high")
_TOKENS_PER_IMAGE = 272  # a fixed, plausible output-token cost per generated image


def tiny_png(seed: str, side: int = 8) -> bytes:
    """A ``side`` by ``side`` single-colour RGB PNG whose colour comes from the seed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = bytes.fromhex(seed[:6])
    rows = b"".join(b"\x00" + pixel * side for _ in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _images(seed: str, body: dict[str, Any], created: int, *, edit: bool) -> tuple[dict[str, Any], int, int]:
    prompt, n = body["prompt"], body.get("n", 1)
    model = str(body.get("model") or "gpt-image-1")
    encoded = base64.b64encode(tiny_png(seed)).decode()
    as_url = body.get("response_format") == "url"
    data = [
        {"url": f"data:image/png;base64,{encoded}"} if as_url else {"b64_json": encoded} for _ in range(n)
    ]
    reply: dict[str, Any] = {"created": created, "data": data}
    if not model.startswith("gpt-image"):
        return reply, 0, 0  # dall-e models report no token usage
    text_tokens = count_tokens(prompt)
    image_tokens = 65 if edit else 0  # an edit also reads its input image
    output_tokens = _TOKENS_PER_IMAGE * n
    reply.update(
        {
            "background": "transparent" if body.get("background") == "transparent" else "opaque",
            "output_format": body.get("output_format")
            if body.get("output_format") in _IMAGE_FORMATS
            else "png",
            "quality": body.get("quality") if body.get("quality") in _IMAGE_QUALITIES else "medium",
            "size": body.get("size") if body.get("size") not in (None, "auto") else "1024x1024",
            "usage": {
                "input_tokens": text_tokens + image_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens": output_tokens,
                "output_tokens_details": {"text_tokens": 0, "image_tokens": output_tokens},
                "total_tokens": text_tokens + image_tokens + output_tokens,
            },
        }
    )
    return reply, text_tokens + image_tokens, output_tokens


def _video(seed: str, body: dict[str, Any], created: int) -> tuple[dict[str, Any], int, int]:
    prompt, seconds, size = body["prompt"], str(body.get("seconds", "4")), body.get("size", "720x1280")
    reply = {
        "id": derived_id("video_", seed, length=40),
        "object": "video",
        "created_at": created,
        "completed_at": created,
        "expires_at": created + 86400,
        "status": "completed",
        "model": body.get("model") or "sora-2",
        "progress": 100,
        "prompt": prompt,
        "seconds": seconds,
        "size": size,
        "remixed_from_video_id": None,
        "error": None,
    }
    return reply, 0, 0


def build(
    endpoint: str, seed: str, body: dict[str, Any], created: int
) -> tuple[dict[str, Any], int, int] | None:
    if endpoint == "/v1/images/generations":
        return _images(seed, body, created, edit=False)
    if endpoint == "/v1/images/edits":
        return _images(seed, body, created, edit=True)
    if endpoint == "/v1/videos":
        return _video(seed, body, created)
    return None
