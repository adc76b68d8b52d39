"""Standard Webhooks signatures (spec 1.0): ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

Signed content is ``{id}.{timestamp}.{body}`` over the exact bytes sent; the key is the base64 part of
the ``whsec_`` secret. The id is the request's idempotency key, so it stays the same across retries
and redeliveries (receivers dedupe on it); the timestamp is that of the attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from batch_pipeline.config import decode_signing_secret


class Signer:
    def __init__(self, secret: str) -> None:
        self._key = decode_signing_secret(secret)

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        mac = hmac.new(self._key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
        return "v1," + base64.b64encode(mac.digest()).decode()

    def headers(self, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": self.sign(msg_id, ts, body),
        }
