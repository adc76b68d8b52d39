"""Resources named after the systems they wrap: Postgres (the app database), OpenAI, RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg

from batch_pipeline.config import Settings, normalize_database_url
from batch_pipeline.db import connect


class PostgresResource(dg.ConfigurableResource):
    """The app database. Short-lived connections with dict rows; the DB clock is the only clock."""

    dsn: str

    @contextmanager
    def connect(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        with connect(normalize_database_url(self.dsn), autocommit=autocommit) as conn:
            yield conn


class OpenAIResource(dg.ConfigurableResource):
    """The OpenAI API (or the simulator) through the official SDK."""

    base_url: str
    api_key: str
    timeout_seconds: float = 120.0
    # The SDK retries connection errors, 408, 409, 429 and 5xx with backoff before we see them.
    max_retries: int = 3

    def client(self, timeout_seconds: float | None = None, max_retries: int | None = None):
        """An ``openai.OpenAI`` (imported lazily: the SDK import is slow); sensors pass shorter limits."""
        import openai

        return openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout_seconds if timeout_seconds is None else timeout_seconds,
            max_retries=self.max_retries if max_retries is None else max_retries,
        )


class RabbitMQResource(dg.ConfigurableResource):
    """RabbitMQ for result delivery. ``url`` empty means not configured."""

    url: str = ""


class PipelineSettingsResource(dg.ConfigurableResource):
    """The batching, polling and delivery knobs from the service settings, as one resource."""

    batch_max_requests: int = 50_000
    batch_max_bytes: int = 199_000_000
    batch_max_age_seconds: int = 3600
    openai_poll_interval_seconds: int = 60
    token_safety_factor: float = 1.1
    openai_max_resubmits: int = 3
    token_limit_backoff_minutes: str = "5,10,20,40,80"
    status_poll_max_per_tick: int = 50
    openai_delete_files: bool = True
    retention_days: int = 30
    disable_delivery_retry: bool = False
    webhook_signing_secret: str = ""
    webhook_block_private_networks: bool = False
    webhook_allowed_hosts: str = ""
    delivery_retry_schedule_seconds: str = "5,300,1800,7200,18000,36000,36000"
    delivery_retry_jitter: float = 0.2
    delivery_concurrency: int = 32
    delivery_claim_batch_size: int = 500
    delivery_claim_lease_seconds: int = 900
    delivery_sensor_max_runs: int = 20
    webhook_connect_timeout_seconds: float = 10.0
    webhook_read_timeout_seconds: float = 15.0
    rabbitmq_publish_window: int = 1000
    rabbitmq_confirm_timeout_seconds: float = 30.0

    def token_limit_backoff_schedule(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.token_limit_backoff_minutes.split(",") if v.strip())


def build_resources(settings: Settings, dsn: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources from the service settings. Secrets stay ``EnvVar``s so the Dagster UI never shows them."""
    return {
        "postgres": PostgresResource(dsn=dsn or dg.EnvVar("DATABASE_URL")),
        "openai": OpenAIResource(
            base_url=settings.openai_client_base_url,
            # The simulator accepts any key; a real key is only ever read from OPENAI_API_KEY.
            api_key=dg.EnvVar("OPENAI_API_KEY") if settings.openai_api_key else "sk-simulator",
        ),
        "rabbitmq": RabbitMQResource(url=settings.rabbitmq_url or ""),
        "pipeline": PipelineSettingsResource(
            batch_max_requests=settings.batch_max_requests,
            batch_max_bytes=settings.batch_max_bytes,
            batch_max_age_seconds=settings.batch_max_age_seconds,
            openai_poll_interval_seconds=settings.openai_poll_interval_seconds,
            token_safety_factor=settings.token_estimate_safety_factor,
            openai_max_resubmits=settings.openai_max_resubmits,
            token_limit_backoff_minutes=settings.token_limit_backoff_minutes,
            status_poll_max_per_tick=settings.status_poll_max_per_tick,
            openai_delete_files=settings.openai_delete_files,
            retention_days=settings.retention_days,
            disable_delivery_retry=settings.disable_delivery_retry,
            webhook_signing_secret=dg.EnvVar("WEBHOOK_SIGNING_SECRET")
            if settings.webhook_signing_secret
            else "",
            webhook_block_private_networks=settings.webhook_block_private_networks,
            webhook_allowed_hosts=settings.webhook_allowed_hosts,
            delivery_retry_schedule_seconds=settings.delivery_retry_schedule_seconds,
            delivery_retry_jitter=settings.delivery_retry_jitter,
            delivery_concurrency=settings.delivery_concurrency,
            delivery_claim_batch_size=settings.delivery_claim_batch_size,
            delivery_claim_lease_seconds=settings.delivery_claim_lease_seconds,
            delivery_sensor_max_runs=settings.delivery_sensor_max_runs,
            webhook_connect_timeout_seconds=settings.webhook_connect_timeout_seconds,
            webhook_read_timeout_seconds=settings.webhook_read_timeout_seconds,
            rabbitmq_publish_window=settings.rabbitmq_publish_window,
            rabbitmq_confirm_timeout_seconds=settings.rabbitmq_confirm_timeout_seconds,
        ),
    }
