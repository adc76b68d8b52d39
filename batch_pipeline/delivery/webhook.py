"""Webhook sender: one aiohttp session per delivery run, bounded concurrency, explicit timeouts.

aiohttp, not httpx: on this machine httpx's async pool fell to ~170 deliveries/s at 32 in flight while
aiohttp kept ~2,900/s (``bench/delivery.py`` measures both). Redirects are never followed (a 3xx is
a final failure: following would bypass the SSRF check and re-POST the body somewhere unvetted).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import quote

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

import batch_pipeline
from batch_pipeline.delivery.backoff import parse_retry_after
from batch_pipeline.delivery.signing import Signer
from batch_pipeline.redaction import scrubbed, secret_values
from batch_pipeline.states import (
    BLOCKED_BY_POLICY,
    CONNECTION_ERROR,
    HTTP_STATUS_NOT_2XX,
    OTHER,
    SUCCESS,
    TIMEOUT,
)
from batch_pipeline.store.records import Attempt, Delivery, truncate, truncate_bytes
from batch_pipeline.url_policy import BlockedByPolicy, EgressPolicy, literal_address

# Statuses worth retrying: the receiver is overloaded, restarting or asks us to slow down.
TRANSIENT_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
# Enough of a response to keep (error bodies) and to let a small 2xx body finish so the connection
# is reused; anything longer is cut and that connection closed.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = f"openai-batch-manager/{batch_pipeline.__version__}"


class PinningResolver(AbstractResolver):
    """Resolves through the system resolver and returns only vetted addresses; aiohttp connects to
    exactly what this returns (keeping Host and SNI), which pins the connection to a checked address.
    A name with any denied address is refused whole: mixed answers are a rebinding tell.
    """

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.enabled and not self._policy.host_allowed(host):
            for r in results:
                reason = self._policy.address_reason(ipaddress.ip_address(r["host"]))
                if reason:
                    raise BlockedByPolicy(f"{host} resolves to a denied address: {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class WebhookOptions:
    connect_timeout: float = 10.0
    read_timeout: float = 15.0
    concurrency: int = 32
    signing_secret: str | None = None
    policy: EgressPolicy = field(default_factory=lambda: EgressPolicy(False))


def _header_value(text: str) -> str:
    # Header values must be printable ASCII; custom ids that are not go out percent-encoded.
    return text if text.isascii() and text.isprintable() else quote(text, safe="")


def classify_status(status: int) -> tuple[str, bool]:
    """(outcome, transient) for an HTTP status."""
    if 200 <= status < 300:
        return SUCCESS, False
    return HTTP_STATUS_NOT_2XX, status in TRANSIENT_STATUSES


class WebhookSender:
    def __init__(self, options: WebhookOptions) -> None:
        self.options = options
        self._signer = Signer(options.signing_secret) if options.signing_secret else None
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, tuple[URL, str | None]] = {}

    async def __aenter__(self) -> WebhookSender:
        o = self.options
        connector = aiohttp.TCPConnector(
            limit=o.concurrency, resolver=PinningResolver(o.policy), ttl_dns_cache=10
        )
        timeout = aiohttp.ClientTimeout(
            total=o.connect_timeout + o.read_timeout, sock_connect=o.connect_timeout, sock_read=o.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"user-agent": USER_AGENT}, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | None) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self, d: Delivery) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "idempotency-key": d.key,
            "x-batcher-request-id": str(d.request_id),
            "x-batcher-custom-id": _header_value(d.custom_id),
        }
        # The receiver's credentials (intake allowed only names in redaction.SECRET_HEADER_NAMES, so
        # none of ours above is overridden); sent with every attempt, never logged.
        own = d.delivery_config.get("headers")
        if own:
            headers.update(own)
        if self._signer:
            headers.update(self._signer.headers(d.key, d.body))
        return headers

    def _target(self, webhook_url: str) -> tuple[URL, str | None]:
        """The parsed URL and, for a literal IP host, why the policy denies it (aiohttp skips the
        resolver for literal IPs, so those are vetted here). Cached: a batch has few distinct URLs."""
        cached = self._targets.get(webhook_url)
        if cached is None:
            url = URL(webhook_url)
            # 127.1, 0177.0.0.1, 2130706433 are 127.0.0.1 too (aiohttp refuses them as not canonical,
            # which was recorded as a retried ``other``): vetted here as the address they stand for.
            ip = literal_address(url.host or "")
            reason = self.options.policy.address_reason(ip) if ip is not None else None
            if len(self._targets) > 10_000:
                self._targets.clear()
            cached = self._targets[webhook_url] = (url, reason)
        return cached

    async def send(self, d: Delivery) -> Attempt:
        assert self._session is not None, "use WebhookSender as an async context manager"
        started = time.perf_counter()

        def done(outcome: str, transient: bool, **kw: object) -> Attempt:
            ms = int((time.perf_counter() - started) * 1000)
            if isinstance(kw.get("error"), str):  # an error may quote the URL: no credential in it
                kw["error"] = scrubbed(kw["error"], secret_values(d.delivery_config))  # type: ignore[arg-type]
            return Attempt(outcome, transient, duration_ms=ms, **kw)  # type: ignore[arg-type]

        try:
            url, reason = self._target(d.delivery_config["webhook_url"])
        except (KeyError, TypeError, ValueError) as exc:
            return done(OTHER, False, error=f"invalid webhook_url: {exc}")
        if reason:
            return done(
                BLOCKED_BY_POLICY, False, error=f"blocked by WEBHOOK_BLOCK_PRIVATE_NETWORKS: {reason}"
            )
        try:
            async with self._session.post(
                url, data=d.body, headers=self.headers(d), allow_redirects=False
            ) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES)
                outcome, transient = classify_status(resp.status)
                if outcome == SUCCESS:
                    return done(SUCCESS, False, http_status=resp.status)
                text = raw.decode("utf-8", "replace")
                if 300 <= resp.status < 400:
                    text = f"redirect to {resp.headers.get('location', '(no location)')} not followed. {text}"
                return done(
                    outcome,
                    transient,
                    http_status=resp.status,
                    error=truncate_bytes(text),  # the receiver's words: MAX_REPLY_BYTES at most
                    retry_after=parse_retry_after(resp.headers.get("retry-after")),
                )
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, BlockedByPolicy):
                return done(
                    BLOCKED_BY_POLICY,
                    False,
                    error=f"blocked by WEBHOOK_BLOCK_PRIVATE_NETWORKS: {exc.os_error}",
                )
            return done(CONNECTION_ERROR, True, error=truncate(f"DNS: {exc}"))
        except TimeoutError as exc:  # aiohttp's connect/read timeouts subclass it
            return done(
                TIMEOUT, True, error=truncate(f"{type(exc).__name__}: {exc}" if str(exc) else "timed out")
            )
        except (aiohttp.ClientConnectionError, OSError) as exc:
            return done(CONNECTION_ERROR, True, error=truncate(f"{type(exc).__name__}: {exc}"))
        except aiohttp.InvalidURL as exc:  # e.g. a host aiohttp will not connect to: no retry helps
            return done(OTHER, False, error=truncate(f"{type(exc).__name__}: {exc}"))
        except aiohttp.ClientError as exc:
            return done(OTHER, True, error=truncate(f"{type(exc).__name__}: {exc}"))
        except ValueError as exc:  # e.g. a header or URL aiohttp refuses
            return done(OTHER, False, error=truncate(f"{type(exc).__name__}: {exc}"))

    async def send_all(self, deliveries: list[Delivery]) -> list[Attempt]:
        """Send with at most ``concurrency`` in flight; results in input order."""
        results: list[Attempt | None] = [None] * len(deliveries)
        todo = iter(enumerate(deliveries))

        # ``concurrency`` workers sharing one iterator: no task and no semaphore round per delivery.
        async def worker() -> None:
            for index, d in todo:
                results[index] = await self.send(d)

        await asyncio.gather(*(worker() for _ in range(min(self.options.concurrency, len(deliveries)))))
        return results  # type: ignore[return-value]
