"""Deliver one batch's due results: claim a chunk, send it (webhooks and RabbitMQ side by side),
record every attempt and the new states in bulk, repeat until nothing is due, then settle the batch.

A run delivers what is due while it runs, including retries that fall due before it ends; retries
further out are left to a later wave (the delivery sensor). Nothing is sent without a claim, and
every claim is either recorded or expires, so a crash loses nothing (it may send twice: consumers
dedupe on the idempotency key).
"""

from __future__ import annotations

import asyncio
import collections
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

FIRST_CLAIM = 256  # the first chunk of a run (at least two per webhook sender); then doubling


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


class _Chunk:
    """The webhooks of one claimed chunk, sent by the shared workers; ``done`` once all have ended."""

    __slots__ = ("done", "remaining", "results")

    def __init__(self, size: int, done: asyncio.Future[list[Attempt]]) -> None:
        self.results: list[Attempt | None] = [None] * size
        self.remaining = size
        self.done = done


class _Transports:
    """The webhook sender and the RabbitMQ publisher (on its own thread) for one run. Chunks queue
    behind each other: ``concurrency`` workers start on the next chunk's webhooks while the last of
    the previous one are in flight (a ``send_all`` per chunk waited for its slowest send)."""

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
        self._queue: asyncio.Queue[tuple[Delivery, _Chunk, int]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._publishing: list[asyncio.Future[list[Attempt]]] = []

    async def __aenter__(self) -> _Transports:
        await self.webhooks.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.settle()
        finally:
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            await self.webhooks.__aexit__(*exc)
            if self.publisher is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, self.publisher.close)
            self._thread.shutdown(wait=True)

    async def settle(self) -> None:
        """Drop the webhooks not yet started and wait for those in flight: when the run stops early
        (its database failed) no send is left running. What was dropped is still claimed: it is
        sent again once the lease runs out."""
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        await self._queue.join()
        for publishing in self._publishing:
            publishing.cancel()  # not started: never starts; started: the thread finishes it
        self._publishing.clear()

    async def _hook_worker(self) -> None:
        while True:
            d, chunk, index = await self._queue.get()
            try:
                if not chunk.done.done():
                    chunk.results[index] = await self.webhooks.send(d)
                    chunk.remaining -= 1
                    if chunk.remaining == 0:
                        chunk.done.set_result(chunk.results)  # type: ignore[arg-type]
            except Exception as exc:  # a bug, not a delivery outcome (send returns those): stop the run
                if not chunk.done.done():
                    chunk.done.set_exception(exc)
            finally:
                self._queue.task_done()

    def _send_hooks(self, hooks: list[Delivery]) -> asyncio.Future[list[Attempt]]:
        done: asyncio.Future[list[Attempt]] = asyncio.get_running_loop().create_future()
        if not hooks:
            done.set_result([])
            return done
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._hook_worker()) for _ in range(self.opts.webhook.concurrency)
            ]
        chunk = _Chunk(len(hooks), done)
        for index, d in enumerate(hooks):
            self._queue.put_nowait((d, chunk, index))
        return done

    def _publish(self, ds: list[Delivery]) -> asyncio.Future[list[Attempt]]:
        loop = asyncio.get_running_loop()
        if not ds or self.publisher is None:
            done: asyncio.Future[list[Attempt]] = loop.create_future()
            # Transient: once RABBITMQ_URL is set (and the service restarted) the retries get through.
            msg = "RabbitMQ is not configured. Set RABBITMQ_URL to enable RabbitMQ delivery."
            done.set_result([Attempt(OUTCOME_NO_RABBITMQ, True, error=msg) for _ in ds])
            return done
        # One thread: this chunk's publish starts as soon as the previous chunk's has ended.
        publishing = loop.run_in_executor(self._thread, self.publisher.publish_batch, ds)
        self._publishing = [p for p in self._publishing if not p.done()] + [publishing]
        return publishing

    def submit(self, claimed: list[Delivery]) -> asyncio.Future[list[tuple[Delivery, Attempt]]]:
        """Start sending a claimed chunk behind those already submitted; its (delivery, attempt)s."""
        kind = {d.request_id: _kind(d.delivery_config) for d in claimed}
        hooks = [d for d in claimed if kind[d.request_id] == "webhook"]
        queue = [d for d in claimed if kind[d.request_id] == "rabbitmq"]
        other = [d for d in claimed if kind[d.request_id] not in ("webhook", "rabbitmq")]
        sending = asyncio.gather(self._send_hooks(hooks), self._publish(queue))

        async def outcome() -> list[tuple[Delivery, Attempt]]:
            hook_results, queue_results = await sending
            bad = [Attempt(OTHER, False, error=f"unknown delivery type {kind[d.request_id]}") for d in other]
            return [
                *zip(hooks, hook_results, strict=True),
                *zip(queue, queue_results, strict=True),
                *zip(other, bad, strict=True),
            ]

        return asyncio.ensure_future(outcome())


async def deliver_batch(
    dsn: str, batch_id: int, opts: DeliveryOptions, rng: random.Random | None = None
) -> DeliveryReport:
    """Deliver every due result of the batch; settle the batch outcome when nothing is left open."""
    report = DeliveryReport(batch_id)
    # Two sessions: the next chunk's claim and the last chunk's record run side by side (each its own
    # transaction, on different rows), so a chunk's database work takes the longer of the two, not
    # their sum, and stays shorter than sending the chunk in between.
    async with (
        await psycopg.AsyncConnection.connect(dsn) as claims,
        await psycopg.AsyncConnection.connect(dsn) as records,
        _Transports(opts) as transports,
    ):
        # Pipelined: at most two chunks are claimed and unrecorded, the one being sent and the next,
        # queued behind it (the lease covers both: config.py). When a chunk has been sent, the one
        # after next is claimed and the sent one recorded, side by side, while the chunk between is
        # sent: the database work hides behind the network, and the senders never run dry.
        sending: collections.deque[asyncio.Future[list[tuple[Delivery, Attempt]]]] = collections.deque()
        # Slow start: the first claim is small so that sending begins at once; each next one doubles
        # up to claim_size (a big first claim kept the receivers idle while it ran).
        size = min(opts.claim_size, max(FIRST_CLAIM, 2 * opts.webhook.concurrency))

        async def claim() -> None:
            nonlocal size
            claimed = await store.claim(claims, batch_id, size, opts.lease_seconds)
            size = min(opts.claim_size, 2 * size)
            if claimed:
                sending.append(transports.submit(claimed))

        async def record(sent: list[tuple[Delivery, Attempt]]) -> None:
            outcomes = [decide(d, a, opts, rng) for d, a in sent]
            await store.record(records, outcomes)
            report.attempts += len(outcomes)
            report.states.update(o.state for o in outcomes)
            report.outcomes.update(o.attempt.outcome for o in outcomes)

        try:
            await claim()
            while sending:
                if len(sending) == 1:
                    await claim()
                sent = await sending.popleft()
                if not sending:
                    await record(sent)
                    await claim()  # recording may have made retries due at once (a zero wait)
                    continue
                claiming = asyncio.ensure_future(claim())
                try:
                    await record(sent)
                except BaseException:
                    claiming.cancel()  # what it claimed is sent after the lease, by a later run
                    await asyncio.gather(claiming, return_exceptions=True)
                    raise
                await claiming
        except BaseException:
            await transports.settle()  # never leave a send running when the database fails
            for future in sending:
                future.cancel()
            raise
        report.batch_state = await store.finish_batch(claims, batch_id)
    log.info("batch %s delivery: %s", batch_id, report.as_dict())
    return report
