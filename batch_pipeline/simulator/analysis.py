"""Replies of the endpoints that analyse their input: embeddings and moderations.

An embedding depends only on model and input text (not on custom_id), so equal texts embed equally, as
they would for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import Any

from .ids import derived_id, digest
from .textgen import count_tokens, text_of

_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)  # fmt: skip


def vector(model: str, text: str, dimensions: int) -> list[float]:
    raw = hashlib.shake_256(f"{model}\x00{text}".encode()).digest(4 * dimensions)
    values = [int.from_bytes(raw[i : i + 4], "little") / 2**31 - 1.0 for i in range(0, len(raw), 4)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def embeddings(body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    model, value = body["model"], body["input"]
    if isinstance(value, list) and (not value or all(isinstance(v, int) for v in value)):
        items: list[Any] = [value]  # one input given as a token array
    else:
        items = value if isinstance(value, list) else [value]
    dimensions = body.get("dimensions", 8)
    data = []
    for index, item in enumerate(items):
        values = vector(model, json.dumps(item), dimensions)
        embedding: Any = values
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(i) if isinstance(i, list) else count_tokens(str(i)) for i in items)
    reply = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return reply, tokens, 0


def moderations(seed: str, body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    value = body["input"]
    multimodal = isinstance(value, list) and any(isinstance(v, dict) for v in value)
    items = [text_of(value)] if multimodal else (value if isinstance(value, list) else [value])
    input_types = ["text", "image"] if multimodal else ["text"]
    results = []
    for index, _ in enumerate(items):
        item_seed = digest(seed, str(index))
        scores = {name: round(int(item_seed[i * 2 : i * 2 + 4], 16) / 65535 * 1e-3, 8)
                  for i, name in enumerate(_MODERATION_CATEGORIES)}  # fmt: skip
        results.append(
            {
                "flagged": False,
                "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
                "category_scores": scores,
                "category_applied_input_types": {name: list(input_types) for name in _MODERATION_CATEGORIES},
            }
        )
    model = body.get("model") or "omni-moderation-latest"
    return {"id": derived_id("modr-", seed, length=29), "model": model, "results": results}, 0, 0
