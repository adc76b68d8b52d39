"""Helpers for the UI tests: the CSRF token out of a rendered page, and a form post with it."""

from __future__ import annotations

import re

import httpx

CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


def csrf_of(client: httpx.Client, path: str = "/settings") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text[:500]
    found = CSRF_META.search(page.text)
    assert found is not None
    return found.group(1)


def post_form(
    client: httpx.Client, path: str, data: dict[str, str], page: str = "/settings"
) -> httpx.Response:
    return client.post(path, data={"csrf_token": csrf_of(client, page), **data})


def flash(client: httpx.Client, response: httpx.Response) -> str:
    """Follow an action's redirect and read the one-shot notice the page shows."""
    assert response.status_code == 303, response.text[:500]
    page = client.get(response.headers["location"])
    found = re.search(r'<div class="flash" role="status" id="flash">([^<]*)</div>', page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)
