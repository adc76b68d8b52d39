"""What the readiness check asks of the pipeline's dependencies: Postgres, OpenAI (as the pipeline
last found it), RabbitMQ and the Dagster daemon."""

from __future__ import annotations

import asyncio
import json
import time

import pika
import psycopg

from batch_pipeline.states import WAITING_FOR_CREDENTIALS
from batch_pipeline.store import batch_actions, daemon_heartbeats
from batch_pipeline.store.migrate import check_schema

# The daemon's loops the pipeline stands on: sensors start every stage, the schedule cleans up, and the
# queued-run coordinator launches the runs the sensors ask for.
REQUIRED_DAEMONS = ("SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR")


async def check_postgres(conn: psycopg.AsyncConnection) -> None:
    """Raises unless Postgres answers with our migrated schema."""
    await check_schema(conn)


async def openai_refusal(conn: psycopg.AsyncConnection) -> str | None:
    """Why the pipeline cannot reach OpenAI with our key, or None: batches wait while it refuses it."""
    waiting = await batch_actions.count_waiting_for(conn, WAITING_FOR_CREDENTIALS)
    if waiting == 0:
        return None
    return f"error: OpenAI refused the API key; {waiting} batches wait (check OPENAI_API_KEY)"


async def rabbitmq_problem(url: str, timeout: float) -> str | None:
    """Why RabbitMQ does not take a connection with RABBITMQ_URL's credentials, or None.

    A real AMQP handshake (not a TCP probe): a wrong password or vhost is as unready as a closed port.
    pika is blocking, so the handshake runs in a thread, bounded by ``timeout``.
    """

    def handshake() -> None:
        params = pika.URLParameters(url)
        params.socket_timeout = timeout
        params.stack_timeout = timeout
        params.connection_attempts = 1
        pika.BlockingConnection(params).close()

    try:
        await asyncio.to_thread(handshake)
    except Exception as exc:  # any failure is the answer; its type names it, the URL is never shown
        return f"error: {type(exc).__name__}"
    return None


async def daemon_status(conn: psycopg.AsyncConnection, max_age_seconds: float, required: bool) -> str | None:
    """ "ok", or why the Dagster daemon looks down (a heartbeat it needs is missing or older than
    ``max_age_seconds``). None when there is nothing to check: no Dagster tables in this database and
    Dagster's storage was not named (``required``), as for an API deployed without a pipeline."""
    if not await daemon_heartbeats.table_present(conn):
        return "error: no Dagster storage here (daemon_heartbeats missing)" if required else None
    bodies = await daemon_heartbeats.heartbeat_bodies(conn)
    now = time.time()
    stale = []
    for daemon_type in REQUIRED_DAEMONS:
        beat = _timestamp(bodies.get(daemon_type))
        if beat is None:
            stale.append(f"{daemon_type} never")
        elif now - beat > max_age_seconds:
            stale.append(f"{daemon_type} {int(now - beat)} s ago")
    return f"error: no recent daemon heartbeat ({', '.join(stale)})" if stale else "ok"


async def daemon_status_at(dsn: str, max_age_seconds: float, timeout: float) -> str:
    """``daemon_status`` in Dagster's own storage database (DAGSTER_DATABASE_URL), one short connection."""
    try:
        async with asyncio.timeout(timeout):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                return await daemon_status(conn, max_age_seconds, required=True) or "ok"
    except Exception as exc:  # unreachable storage is the answer, not an error of the probe
        return f"error: Dagster storage unreachable ({type(exc).__name__})"


def _timestamp(body: str | None) -> float | None:
    try:
        value = json.loads(body)["timestamp"] if body else None
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None
