"""Deliver one batch's due results: claim a chunk, send it (webhooks and RabbitMQ side by side),
record every attempt and the new states in bulk, repeat until nothing is due, then settle the batch.

A run delivers what is due while it runs, including retries that fall due before it ends; retries
further out are left to a later wave (the delivery sensor). Nothing is sent without a claim, and
every claim is either recorded or expires, so a crash loses nothing (it may send twice: consumers
dedupe on the idempotency key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg

from batch_pipeline.config import Settings
from batch_pipeline.delivery.backoff import next_delay
from batch_pipeline.delivery.rabbitmq import RECONNECT_SECONDS, RabbitPublisher
from batch_pipeline.delivery.webhook import WebhookOptions, WebhookSender
from batch_pipeline.states import OTHER, OUTCOME_NO_RABBITMQ
from batch_pipeline.store import deliveries as store
from batch_pipeline.store.records import Attempt, Delivery
from batch_pipeline.url_policy import EgressPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOptions:
    webhook: WebhookOptions = field(default_factory=WebhookOptions)
    rabbitmq_url: str | None = None
    rabbitmq_window: int = 1000
    rabbitmq_confirm_timeout: float = 30.0
    rabbitmq_reconnect_seconds: float = RECONNECT_SECONDS  # one broker outage ridden out per run
    schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.2
    disable_retry: bool = False
    claim_size: int = 500
    lease_seconds: float = 900

    @classmethod
    def from_settings(cls, s: Settings) -> DeliveryOptions:
        return cls(
            webhook=WebhookOptions(
                connect_timeout=s.webhook_connect_timeout_seconds,
                read_timeout=s.webhook_read_timeout_seconds,
                concurrency=s.delivery_concurrency,
                signing_secret=s.webhook_signing_secret.get_secret_value()
                if s.webhook_signing_secret
                else None,
                policy=EgressPolicy.from_settings(s),
            ),
            rabbitmq_url=s.rabbitmq_url,
            rabbitmq_window=s.rabbitmq_publish_window,
            rabbitmq_confirm_timeout=s.rabbitmq_confirm_timeout_seconds,
            schedule=s.delivery_retry_schedule,
            jitter=s.delivery_retry_jitter,
            disable_retry=s.disable_delivery_retry,
            claim_size=s.delivery_claim_batch_size,
            lease_seconds=s.delivery_claim_lease_seconds,
        )


@dataclass
class DeliveryReport:
    batch_id: int
    attempts: int = 0
    states: Counter = field(default_factory=Counter)  # request state after each attempt
    outcomes: Counter = field(default_factory=Counter)  # attempt outcome codes
    batch_state: str | None = None  # the batch outcome, when the batch was settled by this run

    def as_dict(self) -> dict:
        return {
            "batch_id": self.batch_id,
            "attempts": self.attempts,
            "states": dict(self.states),
            "outcomes": dict(self.outcomes),
            "batch_state": self.batch_state,
        }


def decide(d: Delivery, a: Attempt, opts: DeliveryOptions, rng: random.Random | None = None) -> store.Outcome:
    """The request's next state after one attempt."""
    if a.ok:
        return store.Outcome(d, a, "failed" if d.failed_at_openai else "delivered")
    if a.transient and not opts.disable_retry:
        delay = next_delay(d.retries, opts.schedule, opts.jitter, a.retry_after, rng)
        if delay is not None:
            return store.Outcome(d, a, "openai_processed", delay)
    return store.Outcome(d, a, "delivery_failed")


def _kind(config: object) -> str:
    """The delivery type a stored ``delivery_config`` names. Intake only stores objects with a known
    type, but a row written another way (an older or newer version, by hand) must not stop the run:
    anything else fails on its own, finally."""
    if not isinstance(config, dict):
        return f"(delivery_config is not a JSON object: {json.dumps(config)[:100]})"
    kind = config.get("type")
    return kind if kind in ("webhook", "rabbitmq") else repr(kind)


class _Transports:
    """The webhook sender and the RabbitMQ publisher (on its own thread) for one run."""

    def __init__(self, opts: DeliveryOptions) -> None:
        self.opts = opts
        self.webhooks = WebhookSender(opts.webhook)
        self.publisher = (
            RabbitPublisher(
                opts.rabbitmq_url,
                opts.rabbitmq_window,
                opts.rabbitmq_confirm_timeout,
                reconnect_seconds=opts.rabbitmq_reconnect_seconds,
            )
            if opts.rabbitmq_url
            else None
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rabbitmq-publisher")

    async def __aenter__(self) -> _Transports:
        await self.webhooks.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.webhooks.__aexit__(*exc)
        if self.publisher is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.publisher.close)
        self._thread.shutdown(wait=True)

    async def _publish(self, ds: list[Delivery]) -> list[Attempt]:
        if not ds:
            return []
        if self.publisher is None:
            # Transient: once RABBITMQ_URL is set (and the service restarted) the retries get through.
            msg = "RabbitMQ is not configured. Set RABBITMQ_URL to enable RabbitMQ delivery."
            return [Attempt(OUTCOME_NO_RABBITMQ, True, error=msg) for _ in ds]
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self.publisher.publish_batch, ds
        )

    async def send(self, claimed: list[Delivery]) -> list[tuple[Delivery, Attempt]]:
        kind = {d.request_id: _kind(d.delivery_config) for d in claimed}
        hooks = [d for d in claimed if kind[d.request_id] == "webhook"]
        queue = [d for d in claimed if kind[d.request_id] == "rabbitmq"]
        other = [d for d in claimed if kind[d.request_id] not in ("webhook", "rabbitmq")]
        hook_results, queue_results = await asyncio.gather(
            self.webhooks.send_all(hooks), self._publish(queue)
        )
        bad = [Attempt(OTHER, False, error=f"unknown delivery type {kind[d.request_id]}") for d in other]
        return [
            *zip(hooks, hook_results, strict=True),
            *zip(queue, queue_results, strict=True),
            *zip(other, bad, strict=True),
        ]


async def deliver_batch(
    dsn: str, batch_id: int, opts: DeliveryOptions, rng: random.Random | None = None
) -> DeliveryReport:
    """Deliver every due result of the batch; settle the batch outcome when nothing is left open."""
    report = DeliveryReport(batch_id)
    async with await psycopg.AsyncConnection.connect(dsn) as conn, _Transports(opts) as transports:

        async def claim() -> list[Delivery]:
            return await store.claim(conn, batch_id, opts.claim_size, opts.lease_seconds)

        async def record(outcomes: list[store.Outcome]) -> None:
            await store.record(conn, outcomes)
            report.attempts += len(outcomes)
            report.states.update(o.state for o in outcomes)
            report.outcomes.update(o.attempt.outcome for o in outcomes)

        # Pipelined: while one chunk is being sent, the previous chunk is recorded and the next one
        # claimed, so the database round trips hide behind the network instead of adding to it.
        claimed, unrecorded = await claim(), []
        while claimed or unrecorded:
            if not claimed:  # recording may make retries due at once (a zero wait): look again after
                await record(unrecorded)
                claimed, unrecorded = await claim(), []
                continue
            sending = asyncio.create_task(transports.send(claimed))
            try:
                if unrecorded:
                    await record(unrecorded)
                claimed = await claim()
            finally:
                sent = await sending  # never leave a send running when the database fails
            unrecorded = [decide(d, a, opts, rng) for d, a in sent]
        report.batch_state = await store.finish_batch(conn, batch_id)
    log.info("batch %s delivery: %s", batch_id, report.as_dict())
    return report
