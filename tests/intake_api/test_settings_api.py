"""``/api/settings/model-limits`` on the real app and Postgres: defaults, overrides, fallback, and that a
change reaches intake at once (not after its cache expires).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from batch_pipeline.model_limits import DEFAULT_TOKEN_LIMITS, FALLBACK_TOKEN_LIMIT
from tests.intake_api.conftest import assert_error, serve, valid_request


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[httpx.Client]:
    with serve(tmp_path, db_url) as c:
        yield c


def test_defaults_overrides_and_effective_limits(client: httpx.Client) -> None:
    body = client.get("/api/settings/model-limits").json()
    assert {d["model_prefix"]: d["token_limit"] for d in body["defaults"]} == DEFAULT_TOKEN_LIMITS
    assert body["overrides"] == [] and body["fallback_token_limit"] == FALLBACK_TOKEN_LIMIT
    assert body["effective"]["gpt-4o"] == DEFAULT_TOKEN_LIMITS["gpt-4o"]

    resp = client.put("/api/settings/model-limits/gpt-4o", json={"token_limit": 1_350_000})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model_prefix"] == "gpt-4o" and resp.json()["token_limit"] == 1_350_000
    # Upsert: a second PUT replaces the value.
    assert client.put("/api/settings/model-limits/gpt-4o", json={"token_limit": 1_500_000}).status_code == 200
    # Prefixes of fine-tuned model names contain colons (and may contain slashes).
    ft = "ft:gpt-4o-mini:acme/team::x1"
    assert (
        client.put(f"/api/settings/model-limits/{ft}", json={"token_limit": 42}).json()["model_prefix"] == ft
    )

    body = client.get("/api/settings/model-limits").json()
    assert [(o["model_prefix"], o["token_limit"]) for o in body["overrides"]] == [
        (ft, 42),
        ("gpt-4o", 1_500_000),
    ]
    # An override beats every default, even a longer prefix (gpt-4o-mini starts with gpt-4o).
    assert body["effective"]["gpt-4o"] == body["effective"]["gpt-4o-mini"] == 1_500_000
    assert body["effective"][ft] == 42

    assert client.delete("/api/settings/model-limits/gpt-4o").status_code == 204
    body = client.get("/api/settings/model-limits").json()
    assert body["effective"]["gpt-4o"] == DEFAULT_TOKEN_LIMITS["gpt-4o"]
    assert_error(client.delete("/api/settings/model-limits/gpt-4o"), 404, "not_found")


def test_bad_limits_are_422(client: httpx.Client) -> None:
    for bad in (
        {"token_limit": 0},
        {"token_limit": -5},
        {"token_limit": "many"},
        {},
        {"token_limit": 5, "x": 1},
    ):
        assert_error(client.put("/api/settings/model-limits/gpt-4o", json=bad), 422, "validation_error")
    assert_error(
        client.put("/api/settings/model-limits/a%00b", json={"token_limit": 5}), 422, "validation_error"
    )
    assert_error(client.delete("/api/settings/model-limits/a%00b"), 422, "validation_error")
    assert client.get("/api/settings/model-limits").json()["overrides"] == []


def test_a_change_applies_to_intake_at_once(client: httpx.Client) -> None:
    # The first request loads (and caches) the overrides in intake.
    assert client.post("/api/requests", json=valid_request("lim-1")).status_code == 202
    assert client.put("/api/settings/model-limits/gpt-4o-mini", json={"token_limit": 1}).status_code == 200
    assert_error(client.post("/api/requests", json=valid_request("lim-2")), 422, "token_limit", "/body")
    assert client.delete("/api/settings/model-limits/gpt-4o-mini").status_code == 204
    assert client.post("/api/requests", json=valid_request("lim-2")).status_code == 202


def test_the_token_guards_settings(tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url, api_token="s3cret") as c:
        assert_error(c.get("/api/settings/model-limits"), 401, "unauthorized")
        assert_error(c.put("/api/settings/model-limits/gpt-4o", json={"token_limit": 5}), 401, "unauthorized")
        assert_error(c.delete("/api/settings/model-limits/gpt-4o"), 401, "unauthorized")
        assert c.get("/api/settings/model-limits", headers={"x-api-token": "s3cret"}).status_code == 200
        schema = c.get("/api/openapi").json()
    paths = schema["paths"]
    documented = {
        ("get", "/api/settings/model-limits"): {"200", "401"},
        ("put", "/api/settings/model-limits/{model_prefix}"): {"200", "401", "422"},
        ("delete", "/api/settings/model-limits/{model_prefix}"): {"204", "401", "404", "422"},
    }
    for (method, path), statuses in documented.items():
        assert statuses <= set(paths[path][method]["responses"]), (method, path)
