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

PREFIX = "whsec_"


class SigningSecretError(ValueError):
    pass


def decode_secret(secret: str) -> bytes:
    """The HMAC key from a ``whsec_<base64>`` secret (the prefix is optional, as in the libraries)."""
    raw = secret[len(PREFIX) :] if secret.startswith(PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise SigningSecretError("WEBHOOK_SIGNING_SECRET must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise SigningSecretError("WEBHOOK_SIGNING_SECRET must hold at least 16 bytes (24 to 64 advised)")
    return key


class Signer:
    def __init__(self, secret: str) -> None:
        self._key = decode_secret(secret)

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
