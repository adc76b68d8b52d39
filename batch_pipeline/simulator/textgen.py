"""Deterministic text, JSON and tool-call arguments for simulated model replies.

Everything is derived from a digest of the line's custom_id and body, so re-running a batch gives the same
bytes; nothing here is random.
"""

from __future__ import annotations

import json
import math
from typing import Any

_WORDS = (
    "amber", "batch", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kelp",
    "lumen", "meadow", "nectar", "onyx", "prism", "quartz", "river", "saffron", "tundra", "umber", "velvet",
    "willow", "xenon", "yarrow", "zephyr", "aurora", "basalt", "cinder", "dune", "echo", "flint",
)  # fmt: skip


class LineRejected(Exception):
    """The request body is one the real endpoint would refuse with a 4xx; the line goes to the error file."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def line_tokens(line: bytes) -> int:
    """Token estimate of one input line, used for enqueued-token limits and as a reply's input tokens:
    the line's UTF-8 bytes (surrounding whitespace stripped) divided by 4, rounded up."""
    return max(1, math.ceil(len(line.strip()) / 4))


def require(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    if value is None:
        raise LineRejected(f"Missing required parameter: '{key}'.", param=key)
    if not isinstance(value, kind):
        raise LineRejected(f"Invalid type for '{key}'.", param=key)
    return value


def text_of(content: Any) -> str:
    """Plain text of a message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(parts)
    return ""


def last_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    if isinstance(items, list):
        for item in reversed(items):
            if isinstance(item, dict):
                text = text_of(item.get("content"))
                if text:
                    return text
            elif isinstance(item, str) and item:
                return item
    return ""


def sentence(seed: str, prompt: str) -> str:
    snippet = " ".join(prompt.split())[:60]
    words = " ".join(_WORDS[int(seed[i : i + 2], 16) % len(_WORDS)] for i in range(0, 12, 2))
    return f'Simulated reply to "{snippet}": {words}.' if snippet else f"Simulated reply: {words}."


def clip(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Shorten ``text`` to a ``max_*tokens`` budget; the flag says whether it was cut."""
    if isinstance(max_tokens, int) and max_tokens > 0 and count_tokens(text) > max_tokens:
        return text[: max_tokens * 4], True
    return text, False


def sample_json(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A minimal value that satisfies a JSON schema: enough for structured-output parsers."""
    root = schema if root is None else root
    if depth > 12 or not isinstance(schema, dict):
        return None
    if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return sample_json(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sample_json(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: sample_json(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [sample_json(schema.get("items"), root, depth + 1) for _ in range(schema.get("minItems", 0))]
    return {"string": "sim", "integer": 0, "number": 0.0, "boolean": False}.get(str(kind))


def json_reply(fmt: Any, seed: str, prompt: str) -> str | None:
    """Content for ``json_object`` / ``json_schema`` formats; ``None`` for plain text."""
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return json.dumps({"reply": sentence(seed, prompt)})
    if fmt.get("type") == "json_schema":
        # chat nests the schema under "json_schema"; the responses API puts it on the format itself
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
        return json.dumps(sample_json(spec.get("schema", {})))
    return None


def forced_function(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    """The function tool a request forces (``tool_choice`` "required" or a named function), if any."""
    if not isinstance(tools, list) or not tools:
        return None
    functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    if not functions:
        return None
    wanted = None
    if isinstance(tool_choice, dict):
        wanted = tool_choice.get("name") or (tool_choice.get("function") or {}).get("name")
    elif tool_choice != "required":
        return None
    for tool in functions:
        spec = tool.get("function", tool)  # chat nests under "function", responses does not
        if wanted is None or spec.get("name") == wanted:
            arguments = sample_json(spec.get("parameters") or {"type": "object"})
            return {"name": spec.get("name", "tool"), "arguments": json.dumps(arguments)}
    return None
