"""``POST /api/openai/webhook``: OpenAI's batch events as a "check this batch now" hint.

Polling stays the baseline (a self-hosted service is often unreachable from OpenAI); an event only
makes that batch's next status check due at once. On only when ``OPENAI_WEBHOOK_SECRET`` is set. The
signature is the authentication, so no API token: OpenAI cannot send one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from fastapi import APIRouter, Request

from batch_pipeline.admin.openai_events import record_openai_event
from intake_api.body import read_limited
from intake_api.deps import PoolDep, SettingsDep
from intake_api.errors import ApiError
from intake_api.schemas import errors_doc
from intake_api.schemas_batches import WebhookAck

router = APIRouter(prefix="/api/openai", tags=["openai"])

# OpenAI's events are thin ({"id", "type", "data": {"id"}}); anything bigger is not from OpenAI.
MAX_EVENT_BYTES = 64 * 1024
# The Standard Webhooks headers: id, seconds and base64 signatures, all ASCII when OpenAI sends them.
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@lru_cache(maxsize=1)
def _webhooks() -> Any:
    """The SDK's verifier; it uses no client setting but the secret we pass, so one client serves all."""
    import openai  # slow import, paid once and only when the receiver is on

    return openai.OpenAI(api_key="unused-for-verification", base_url="http://127.0.0.1:9/v1").webhooks


def _parse_event(raw: bytes) -> tuple[str, str | None]:
    """(type, data.id) of an event; data.id is the OpenAI batch id for ``batch.*`` events."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        event = None
    data = event.get("data") if isinstance(event, dict) else None
    event_type = event.get("type") if isinstance(event, dict) else None
    object_id = data.get("id") if isinstance(data, dict) else None
    texts = (event_type, "" if object_id is None else object_id)
    # Postgres text cannot hold U+0000; no OpenAI id or type contains it.
    if not all(isinstance(t, str) and "\x00" not in t for t in texts):
        raise ApiError(400, "invalid_payload", "Invalid Payload", "The body is not an OpenAI event object.")
    return event_type, object_id


@router.post(
    "/webhook",
    response_model=WebhookAck,
    responses=errors_doc(400, 404, 413),
    summary="Receive an OpenAI webhook event (Standard Webhooks signature with OPENAI_WEBHOOK_SECRET)",
)
async def openai_webhook(request: Request, pool: PoolDep, settings: SettingsDep) -> dict:
    if settings.openai_webhook_secret is None:
        raise ApiError(
            404, "not_found", "Not Found", "The OpenAI webhook receiver is off (OPENAI_WEBHOOK_SECRET)."
        )
    raw = await read_limited(request, MAX_EVENT_BYTES)
    headers = dict(request.headers)
    for name in SIGNATURE_HEADERS:
        # Starlette decodes header bytes as Latin-1; the SDK's hmac.compare_digest raises TypeError
        # (a 500) on a non-ASCII str, so such a header is refused here, before the verifier sees it.
        if not headers.get(name, "").isascii():
            raise ApiError(400, "invalid_signature", "Invalid Signature", f"The {name} header is not ASCII.")
    try:
        _webhooks().verify_signature(raw, headers, secret=settings.openai_webhook_secret.get_secret_value())
    except ValueError as exc:  # InvalidWebhookSignatureError, or a webhook-* header missing
        raise ApiError(400, "invalid_signature", "Invalid Signature", str(exc)) from None
    event_type, openai_batch_id = _parse_event(raw)
    # A pool connection only once the sender proved it knows the secret (this route has no API token).
    async with pool.connection() as conn:
        is_new, _ = await record_openai_event(conn, headers["webhook-id"], event_type, openai_batch_id)
    return {"status": "ok" if is_new else "ignored"}
