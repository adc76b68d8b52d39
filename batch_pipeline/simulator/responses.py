"""Deterministic reply bodies for every batch endpoint: the text generators live here, embeddings and
moderations in ``analysis``, images and videos in ``media``.

A body the real endpoint would refuse raises :class:`LineRejected`, so the line lands in the error file as
an HTTP 400 line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import analysis, media
from .checks import refusal
from .ids import derived_id, digest
from .textgen import (
    LineRejected,
    clip,
    count_tokens,
    forced_function,
    json_reply,
    last_text,
    sentence,
)

__all__ = ["LineRejected", "Reply", "build_reply"]


@dataclass
class Reply:
    body: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0


def _chat(seed: str, body: dict[str, Any], created: int, input_tokens: int) -> Reply:
    model = body["model"]
    prompt = last_text(body["messages"])
    tool = forced_function(body.get("tools"), body.get("tool_choice"))
    choices = []
    output_tokens = 0
    for index in range(body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1):
        choice_seed = digest(seed, str(index)) if index else seed
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if tool is not None:
            call = {"id": derived_id("call_", choice_seed, length=24), "type": "function", "function": tool}
            message["tool_calls"] = [call]
            finish, output_tokens = "tool_calls", output_tokens + count_tokens(tool["arguments"])
        else:
            content = json_reply(body.get("response_format"), choice_seed, prompt)
            limit = body.get("max_completion_tokens", body.get("max_tokens"))
            content, cut = clip(content or sentence(choice_seed, prompt), limit)
            message["content"] = content
            finish, output_tokens = ("length" if cut else "stop"), output_tokens + count_tokens(content)
        choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
    prompt_tokens = input_tokens
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": prompt_tokens + output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    reply = {
        "id": derived_id("chatcmpl-", seed, length=29),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_simulator",
    }
    return Reply(reply, prompt_tokens, output_tokens)


def _completions(seed: str, body: dict[str, Any], created: int, input_tokens: int) -> Reply:
    model, prompt = body["model"], body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else [p for p in prompt if isinstance(p, str)] or [""]
    n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    choices, output_tokens = [], 0
    for index in range(len(prompts) * n):
        text, cut = clip(
            " " + sentence(digest(seed, str(index)), prompts[index // n]), body.get("max_tokens", 16)
        )
        output_tokens += count_tokens(text)
        choices.append(
            {"text": text, "index": index, "logprobs": None, "finish_reason": "length" if cut else "stop"}
        )
    prompt_tokens = input_tokens
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": output_tokens}
    usage["total_tokens"] = prompt_tokens + output_tokens
    reply = {
        "id": derived_id("cmpl-", seed, length=29),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "fp_simulator",
    }
    return Reply(reply, prompt_tokens, output_tokens)


def _responses(seed: str, body: dict[str, Any], created: int, input_tokens: int) -> Reply:
    model = body["model"]
    prompt = last_text(body.get("input"))
    text_config = body.get("text") if isinstance(body.get("text"), dict) else {}
    tool = forced_function(body.get("tools"), body.get("tool_choice"))
    incomplete = None
    if tool is not None:
        item = {
            "type": "function_call",
            "id": derived_id("fc_", seed, length=40),
            "call_id": derived_id("call_", seed, length=24),
            "status": "completed",
            **tool,
        }
        output_tokens = count_tokens(tool["arguments"])
    else:
        text = json_reply(text_config.get("format"), seed, prompt) or sentence(seed, prompt)
        text, cut = clip(text, body.get("max_output_tokens"))
        incomplete = {"reason": "max_output_tokens"} if cut else None
        content = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {
            "type": "message",
            "id": derived_id("msg_", seed, length=40),
            "status": "incomplete" if cut else "completed",
            "role": "assistant",
            "content": [content],
        }
        output_tokens = count_tokens(text)
    reply = {
        "id": derived_id("resp_", seed, length=40),
        "object": "response",
        "created_at": created,
        "completed_at": created,
        "status": "incomplete" if incomplete else "completed",
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text_config.get("format", {"type": "text"}), "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    return Reply(reply, input_tokens, output_tokens)


_TEXT_BUILDERS: dict[str, Callable[[str, dict[str, Any], int, int], Reply]] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completions,
    "/v1/responses": _responses,
}


def build_reply(endpoint: str, body: dict[str, Any], created: int, *, seed: str, input_tokens: int) -> Reply:
    """The 200 body for one batch line; raises :class:`LineRejected` for a body the endpoint refuses.

    ``seed`` (a digest of the input line, i.e. of custom_id + body) makes the reply deterministic;
    ``input_tokens`` is the line's token estimate, reported as prompt/input tokens.
    """
    refused = refusal(endpoint, body)
    if refused is not None:
        raise refused
    builder = _TEXT_BUILDERS.get(endpoint)
    if builder is not None:
        return builder(seed, body, created, input_tokens)
    if endpoint == "/v1/embeddings":
        return Reply(*analysis.embeddings(body))
    if endpoint == "/v1/moderations":
        return Reply(*analysis.moderations(seed, body))
    return Reply(*media.build(endpoint, seed, body, created))
