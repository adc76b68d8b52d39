"""RabbitMQ intake: consume ``RABBITMQ_INPUT_QUEUE``, store each message as ``POST /api/requests`` would.

Same validation and store as HTTP (``IntakeService.submit_bulk`` on the raw message bytes: the fast
path, then orjson, exactly as the bulk route, so NaN, 1e999 or a lone surrogate are refused alike), in
batches of up to ``RABBITMQ_INTAKE_BATCH_SIZE`` messages with ``RABBITMQ_INTAKE_PREFETCH`` unacked in
flight. A message over ``INTAKE_MAX_BODY_BYTES`` is rejected at once, without being decoded.
Decisions, per message, only after the batch is committed:
- stored, or a duplicate custom_id → ack (duplicates are logged);
- not JSON, invalid, too large → ``basic_reject(requeue=False)`` with the reason logged; the broker
  dead-letters it when the queue has a DLX. Never requeued: a poison message cannot loop;
- a message the intake or the database fails on in an unforeseen way (a bug, a row the database
  refuses) → the batch is retried one message at a time and only the failing one is rejected;
- the database is unreachable or refuses every write (read-only after a failover, no privilege) → the
  batch is requeued and we back off (1 s doubling to 30 s).
The queue is never declared (it must exist). Connection loss or a missing queue → reconnect with the
same backoff, which starts over only after real progress (the broker registered our consumer, or a
batch was stored), so a missing queue is retried 1 s, 2 s, 4 s … 30 s apart, not every second.
SIGTERM/SIGINT stop cleanly: the batch in hand is finished, unacked prefetched messages are requeued.
Intake pause (``POST /api/intake/pause``): the flag is read about once a second; once it is set the
batch in hand is finished, the consumer is cancelled (prefetched messages go back to the queue) and
the connection idles until intake resumes, then consumes again. Messages wait in the queue meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pika
import pika.exceptions
import psycopg

from batch_pipeline.config import Settings, get_settings
from batch_pipeline.intake.service import IntakeService, Outcome
from batch_pipeline.store import intake_control

log = logging.getLogger(__name__)

BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
FLUSH_SECONDS = 0.05  # a partial batch waits at most this long for more messages
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
# SQLSTATE classes that blame the rows written: bad data (22), a constraint (23), a size limit (54).
# Only those can be one message's fault. Any other error from the server (read-only after a failover,
# a revoked privilege, a missing table, out of resources) refuses every message alike: retrying one by
# one would reject, and so drop or dead-letter, the whole queue. Requeue and back off instead.
ROW_ERROR_CLASSES = frozenset({"22", "23", "54"})
PAUSE_POLL_SECONDS = 1.0  # how often the intake pause flag is read (the API caches it as long)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot take writes now, rather than that a row is bad."""
    if isinstance(exc, DB_ERRORS):
        return True
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    return sqlstate is not None and sqlstate[:2] not in ROW_ERROR_CLASSES


@dataclass(frozen=True)
class Message:
    tag: int
    body: bytes


class IntakeConsumer:
    def __init__(
        self,
        settings: Settings,
        dsn: str,
        url: str | None = None,
        queue: str | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.url = url or settings.rabbitmq_url
        self.queue = queue or settings.rabbitmq_input_queue
        if not self.url or not self.queue:
            raise ValueError("RABBITMQ_URL and RABBITMQ_INPUT_QUEUE must both be set for the intake consumer")
        self.dsn = dsn
        self.prefetch = settings.rabbitmq_intake_prefetch
        self.batch_size = settings.rabbitmq_intake_batch_size
        self.max_body_bytes = settings.intake_max_body_bytes
        self.intake = IntakeService(settings)
        self.counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "requeued": 0}
        self._stop = threading.Event()
        self._runner = asyncio.Runner()
        self._db: psycopg.AsyncConnection | None = None
        self._backoff = BACKOFF_START
        self._paused_flag, self._pause_read_at = False, float("-inf")
        # Waits between reconnects; returns early on stop(). Injectable so tests need not sleep.
        self._sleep = sleep or self._stop.wait

    def stop(self) -> None:
        """Ask the consumer to finish the batch in hand and return (thread-safe, signal-safe)."""
        self._stop.set()

    # --- the database side ---------------------------------------------------------------------------

    async def _submit(self, objs: list[bytes]) -> list[Outcome]:
        if self._db is None or self._db.closed:
            self._db = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=5)
        try:
            return await self.intake.submit_bulk(self._db, objs)
        except BaseException:
            await self._db.close()  # a half-done transaction or a broken link: start clean next time
            self._db = None
            raise

    async def _read_paused(self) -> bool:
        if self._db is None or self._db.closed:
            self._db = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=5)
        try:
            paused, _ = await intake_control.get_state(self._db)
        finally:
            await self._db.rollback()  # leave no transaction open under the next submit
        return paused

    def _paused(self) -> bool:
        """The intake pause flag, read at most once per PAUSE_POLL_SECONDS. Unreadable (the database is
        away): the last reading stands, and the next submit meets the outage and backs off."""
        now = time.monotonic()
        if now - self._pause_read_at >= PAUSE_POLL_SECONDS:
            self._pause_read_at = now
            try:
                self._paused_flag = self._runner.run(self._read_paused())
            except psycopg.Error as exc:
                log.warning("could not read the intake pause flag: %s", exc)
        return self._paused_flag

    def _wait_while_paused(self, connection: pika.BlockingConnection) -> None:
        log.info("intake paused: not consuming %s until it resumes", self.queue)
        while not self._stop.is_set() and self._paused():
            connection.sleep(PAUSE_POLL_SECONDS / 2)  # keeps heartbeats going
        if not self._stop.is_set():
            log.info("intake resumed: consuming %s again", self.queue)

    # --- one batch -------------------------------------------------------------------------------------

    def _handle(
        self, channel: pika.adapters.blocking_connection.BlockingChannel, batch: Sequence[Message]
    ) -> None:
        # Too large for POST /api/requests, so too large here: rejected unread (never decoded).
        kept: list[Message] = []
        for m in batch:
            if len(m.body) > self.max_body_bytes:
                log.warning(
                    "rejected message %d: %d bytes, over INTAKE_MAX_BODY_BYTES (%d)",
                    m.tag,
                    len(m.body),
                    self.max_body_bytes,
                )
                channel.basic_reject(m.tag, requeue=False)
                self.counts["rejected"] += 1
            else:
                kept.append(m)
        if kept:
            self._handle_decodable(channel, kept)

    def _handle_decodable(
        self, channel: pika.adapters.blocking_connection.BlockingChannel, batch: Sequence[Message]
    ) -> None:
        try:
            # Raw bytes, as the bulk route passes its items: IntakeService.check decodes them.
            outcomes = self._runner.run(self._submit([m.body for m in batch]))
        except Exception as exc:
            if not database_unavailable(exc):
                self._isolate(channel, batch)
                return
            log.warning(
                "database unavailable (%s: %s); requeueing %d messages, retry in %.0f s",
                type(exc).__name__,
                exc,
                len(batch),
                self._backoff,
            )
            channel.basic_nack(delivery_tag=batch[-1].tag, multiple=True, requeue=True)
            self.counts["requeued"] += len(batch)
            self._pause(channel, self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            return
        self._backoff = BACKOFF_START
        for m, outcome in zip(batch, outcomes, strict=True):
            if outcome.status in ("accepted", "duplicate"):
                if outcome.status == "duplicate":
                    log.info("duplicate custom_id %r acknowledged and dropped", outcome.custom_id)
                channel.basic_ack(m.tag)
                self.counts[outcome.status] += 1
            else:
                reasons = "; ".join(
                    f"{e['source']['pointer'] if 'source' in e else '/'}: {e['detail']}"
                    for e in outcome.errors
                )
                log.warning(
                    "rejected message (custom_id %r, %s): %s", outcome.custom_id, outcome.status, reasons
                )
                channel.basic_reject(m.tag, requeue=False)
                self.counts["rejected"] += 1

    def _isolate(
        self, channel: pika.adapters.blocking_connection.BlockingChannel, batch: Sequence[Message]
    ) -> None:
        # A bug or a row the database refuses, not bad input we know of: find the message that causes
        # it and reject only that one, so it cannot block the queue or loop forever. (Called from the
        # except clause of ``_handle_decodable``: log.exception logs what failed.)
        if len(batch) > 1:
            log.exception("intake batch failed; retrying its %d messages one by one", len(batch))
            for m in batch:
                self._handle_decodable(channel, [m])
        else:
            log.exception("rejecting message %d: intake failed on it", batch[0].tag)
            channel.basic_reject(batch[0].tag, requeue=False)
            self.counts["rejected"] += 1

    def _pause(self, channel: pika.adapters.blocking_connection.BlockingChannel, seconds: float) -> None:
        # Sleeping through the connection keeps its heartbeats going; short slices keep stop() prompt.
        remaining = seconds
        while remaining > 0 and not self._stop.is_set():
            step = min(remaining, 0.5)
            channel.connection.sleep(step)
            remaining -= step

    # --- the broker side -------------------------------------------------------------------------------

    def _consume(self) -> None:
        params = pika.URLParameters(self.url)
        conn = pika.BlockingConnection(params)
        try:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            while not self._stop.is_set():
                if self._paused():
                    self._wait_while_paused(conn)
                    continue
                self._consume_until_paused(channel)
        finally:
            if conn.is_open:
                conn.close()

    def _consume_until_paused(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        """Consume until stop() or an intake pause; then cancel (unacked prefetched messages requeued)."""
        batch: list[Message] = []
        registered = False
        for method, _props, body in channel.consume(self.queue, inactivity_timeout=FLUSH_SECONDS):
            if not registered:
                # The first event means basic.consume succeeded (a missing queue raises before
                # any): only now is the backoff reset. Resetting when the connection opened made
                # a missing queue spin at 1 s forever.
                registered = True
                self._backoff = BACKOFF_START
                log.info(
                    "consuming %s (prefetch %d, batches of %d)",
                    self.queue,
                    self.prefetch,
                    self.batch_size,
                )
            if method is not None:
                batch.append(Message(method.delivery_tag, body))
            if batch and (method is None or len(batch) >= self.batch_size):
                self._handle(channel, batch)
                batch = []
            if not batch and (self._stop.is_set() or self._paused()):
                break
        channel.cancel()

    def run(self) -> None:
        """Consume until ``stop()``; reconnect with backoff when the broker or the queue goes away."""
        try:
            while not self._stop.is_set():
                try:
                    self._consume()
                except (pika.exceptions.AMQPError, OSError) as exc:
                    if self._stop.is_set():
                        break
                    log.warning("RabbitMQ intake: %r; reconnecting in %.0f s", exc, self._backoff)
                    self._sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        finally:
            if self._db is not None:
                self._runner.run(self._db.close())
            self._runner.close()
            log.info("RabbitMQ intake stopped: %s", self.counts)


def main(settings: Settings | None = None, dsn: str | None = None) -> int:
    """Entry point for ``batchman consumer``: runs until SIGTERM/SIGINT."""
    settings = settings or get_settings()
    dsn = dsn or settings.database_url
    if not dsn:
        raise SystemExit("DATABASE_URL is not set")
    if not settings.rabbitmq_url or not settings.rabbitmq_input_queue:
        log.info("RabbitMQ intake disabled: RABBITMQ_URL and RABBITMQ_INPUT_QUEUE must both be set")
        return 0
    consumer = IntakeConsumer(settings, dsn)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: consumer.stop())
    consumer.run()
    return 0
