"""Output line shapes for every batch endpoint, parsed with the SDK's own response types."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import pytest
from openai.types import Completion, CreateEmbeddingResponse, ImagesResponse, ModerationCreateResponse, Video
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

ENDPOINT_CASES = [
    (
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
        ChatCompletion,
    ),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon"}, Completion),
    ("/v1/responses", {"model": "gpt-4.1-mini", "input": "Tell me a joke"}, Response),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello"}, CreateEmbeddingResponse),
    ("/v1/moderations", {"model": "omni-moderation-latest", "input": "hello"}, ModerationCreateResponse),
    ("/v1/images/generations", {"model": "gpt-image-1", "prompt": "a red fox"}, ImagesResponse),
    (
        "/v1/images/edits",
        {"model": "gpt-image-1", "prompt": "add a hat", "image": "file-abc"},
        ImagesResponse,
    ),
    ("/v1/videos", {"model": "sora-2", "prompt": "waves", "seconds": "8"}, Video),
]


def _run(sim: Any, endpoint: str, bodies: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    lines = [sim.request_line(f"c{i}", endpoint, **body) for i, body in enumerate(bodies)]
    batch = sim.submit(lines, endpoint=endpoint)
    done = sim.finish(batch.id)
    assert done.status == "completed"
    return done, sim.read_lines(done.output_file_id)


@pytest.mark.parametrize(
    ("endpoint", "body", "model_type"), ENDPOINT_CASES, ids=[c[0] for c in ENDPOINT_CASES]
)
def test_every_endpoint_writes_sdk_parseable_output_lines(
    sim: Any, endpoint: str, body: dict[str, Any], model_type: Any
) -> None:
    done, lines = _run(sim, endpoint, [body, body])

    assert done.request_counts.model_dump() == {"total": 2, "completed": 2, "failed": 0}
    assert done.error_file_id is None
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        parsed = model_type.model_validate(response["body"])
        assert parsed is not None
    # Bodies derive from custom_id + body: different custom_ids, different ids; same content shape.
    assert lines[0]["id"] != lines[1]["id"]


def test_bodies_are_deterministic_across_batches(sim: Any) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Same question"}]}

    _, first = _run(sim, "/v1/chat/completions", [body])
    _, second = _run(sim, "/v1/chat/completions", [body])

    a, b = first[0]["response"]["body"], second[0]["response"]["body"]
    assert a["id"] == b["id"]
    assert a["choices"] == b["choices"]
    assert a["usage"] == b["usage"]
    assert "Same question" in a["choices"][0]["message"]["content"]


def test_embeddings_dimensions_lists_and_base64(sim: Any) -> None:
    bodies = [
        {"model": "text-embedding-3-small", "input": "alpha"},
        {"model": "text-embedding-3-small", "input": ["alpha", "beta", "gamma"], "dimensions": 16},
        {"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"},
    ]

    _, lines = _run(sim, "/v1/embeddings", bodies)
    # The SDK type expects float lists; base64 is decoded by the SDK client itself, so check that raw.
    single, listed = (CreateEmbeddingResponse.model_validate(x["response"]["body"]) for x in lines[:2])
    encoded = lines[2]["response"]["body"]

    assert len(single.data) == 1 and len(single.data[0].embedding) == 8
    assert math.isclose(sum(v * v for v in single.data[0].embedding), 1.0, rel_tol=1e-4)
    assert [d.index for d in listed.data] == [0, 1, 2]
    assert all(len(d.embedding) == 16 for d in listed.data)
    assert listed.data[0].embedding != listed.data[1].embedding
    decoded = struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert [round(v, 5) for v in decoded] == [round(v, 5) for v in single.data[0].embedding]
    assert encoded["usage"]["prompt_tokens"] == single.usage.prompt_tokens


def test_structured_outputs_follow_the_json_schema(sim: Any) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "owner": {"$ref": "#/$defs/Person"},
            "size": {"enum": ["small", "large"]},
        },
        "$defs": {"Person": {"type": "object", "properties": {"age": {"type": "integer"}}}},
    }
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "Thing", "schema": schema}},
    }
    expected = {"name": "sim", "tags": [], "owner": {"age": 0}, "size": "small"}

    _, lines = _run(sim, "/v1/chat/completions", [chat])
    content = ChatCompletion.model_validate(lines[0]["response"]["body"]).choices[0].message.content
    assert json.loads(content or "") == expected

    responses_body = {
        "model": "gpt-4.1-mini",
        "input": "x",
        "text": {"format": {"type": "json_schema", "name": "Thing", "schema": schema}},
    }
    _, lines = _run(sim, "/v1/responses", [responses_body])
    assert json.loads(Response.model_validate(lines[0]["response"]["body"]).output_text) == expected


def test_forced_tool_calls_and_token_limits(sim: Any) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    bodies = [
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [tool],
            "tool_choice": "required",
        },
        {"model": "m", "messages": [{"role": "user", "content": "a long question " * 5}], "max_tokens": 2},
    ]

    _, lines = _run(sim, "/v1/chat/completions", bodies)
    called, clipped = (ChatCompletion.model_validate(x["response"]["body"]) for x in lines)

    assert called.choices[0].finish_reason == "tool_calls"
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "sim"}  # type: ignore[union-attr]
    assert clipped.choices[0].finish_reason == "length"
    assert len(clipped.choices[0].message.content or "") == 8


def test_a_body_the_endpoint_would_refuse_becomes_a_400_line(sim: Any) -> None:
    lines = [sim.request_line("bad", model="gpt-4o-mini"), sim.chat_line("good")]  # "bad" has no messages
    batch = sim.submit(lines)
    sim.advance(10 + 20)  # half of in_progress: only "bad" has run, and it already counts as failed
    running = sim.client().batches.retrieve(batch.id)
    assert running.request_counts.model_dump() == {"total": 2, "completed": 0, "failed": 1}
    done = sim.finish(batch.id)

    assert done.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    (error_line,) = sim.read_lines(done.error_file_id)
    assert error_line["custom_id"] == "bad" and error_line["error"] is None
    assert error_line["response"]["status_code"] == 400
    assert error_line["response"]["body"]["error"]["param"] == "messages"


def test_images_and_moderations_details(sim: Any) -> None:
    image_body = {"model": "gpt-image-1", "prompt": "fox", "n": 2, "quality": "high", "size": "1024x1536"}
    _, lines = _run(sim, "/v1/images/generations", [image_body])
    images = ImagesResponse.model_validate(lines[0]["response"]["body"])
    assert len(images.data or []) == 2
    assert base64.b64decode(images.data[0].b64_json or "").startswith(b"\x89PNG")  # type: ignore[index]
    assert (images.quality, images.size) == ("high", "1024x1536")
    assert images.usage is not None and images.usage.output_tokens > 0

    _, lines = _run(sim, "/v1/moderations", [{"input": ["one", "two", "three"]}])
    moderation = ModerationCreateResponse.model_validate(lines[0]["response"]["body"])
    assert len(moderation.results) == 3 and not any(r.flagged for r in moderation.results)
