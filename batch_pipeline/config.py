"""All configuration in one settings class, read from the environment (and a ``.env`` file).

The Elixir OpenAI Batch Manager's variable names are kept (``OPENAI_API_KEY``, ``DATABASE_URL``,
``PORT``, ``RABBITMQ_URL``, ``RABBITMQ_INPUT_QUEUE``, ``DISABLE_DELIVERY_RETRY``) so its users can switch.
A bad value fails at start with a message that names the variable.

Longer than 300 lines: every setting is declared here once, with its default, its bounds and the
validator that checks it, so that no other module declares or parses one (tests/test_architecture.py).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from batch_pipeline.db import dagster_storage_url

# OpenAI rejects batch input files over 200 MB; keep a margin for the trailing newline and rounding.
MAX_OPENAI_FILE_BYTES = 200 * 1000 * 1000
DEFAULT_BATCH_MAX_BYTES = MAX_OPENAI_FILE_BYTES - 1_000_000
# Values of these variables never appear in messages or logs.
_SECRET_HINT = re.compile("KEY|TOKEN|SECRET|PASSWORD")
# In any other value, the password of a URL (scheme://user:password@host, up to the last "@" so a
# password holding "@" or "/" is hidden whole) and a libpq-style password=... parameter.
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^/?#@:\s]*:).*@", re.I | re.S)
_PARAM_PASSWORD = re.compile(r"(password=)[^&\s]*", re.I)


# The Standard Webhooks secret format: checked at start, decoded by ``delivery.signing``.
SIGNING_SECRET_PREFIX = "whsec_"


class SigningSecretError(ValueError):
    """WEBHOOK_SIGNING_SECRET is not a usable Standard Webhooks secret."""


def decode_signing_secret(secret: str) -> bytes:
    """The HMAC key from a ``whsec_<base64>`` secret (the prefix is optional, as in the libraries)."""
    raw = secret[len(SIGNING_SECRET_PREFIX) :] if secret.startswith(SIGNING_SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise SigningSecretError("WEBHOOK_SIGNING_SECRET must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise SigningSecretError("WEBHOOK_SIGNING_SECRET must hold at least 16 bytes (24 to 64 advised)")
    return key


class ConfigError(RuntimeError):
    """Raised when the environment holds a value we cannot run with; the message names the variable."""


def normalize_database_url(url: str) -> str:
    """Accept ``postgres://``, ``postgresql://`` and the Elixir service's ``ecto://``; return a libpq URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("postgres", "postgresql", "ecto") or scheme.startswith("postgresql+"):
        return urlunsplit(("postgresql", *parts[1:]))
    raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not one of postgres://, postgresql://, ecto://")


SIM_MODE_DEFAULTS = {
    "batch_max_age_seconds": 10,
    "sensor_interval_seconds": 1,
    "openai_poll_interval_seconds": 1,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- OpenAI ---------------------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(None, description="Unset: the built-in simulator is used.")
    # auto: OpenAI with a key, the simulator without one. simulator: always (a key is never sent).
    # openai: never the simulator, so a missing key stops the start instead of faking every result.
    openai_mode: Literal["auto", "simulator", "openai"] = "auto"
    openai_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. a proxy or Azure."
    )
    openai_webhook_secret: SecretStr | None = Field(None, description="Set: POST /api/openai/webhook is on.")

    # --- Storage and processes ------------------------------------------------------------------
    database_url: str | None = Field(None, description="Unset: an embedded Postgres under DATA_DIR.")
    data_dir: Path = Path("./data")
    port: int = Field(4000, ge=1, le=65535)
    dagster_port: int = Field(3000, ge=1, le=65535)
    # Loopback by default: whoever reaches the API can spend the OpenAI key and read every result, and
    # whoever reaches the Dagster UI can launch runs. Exposing either is a decision (see SECURITY.md).
    host: str = Field("127.0.0.1", min_length=1, description="Interface the API listens on.")
    dagster_host: str = Field("127.0.0.1", min_length=1, description="Interface of the Dagster UI.")
    allow_unauthenticated: bool = Field(False, description="Serve a non-loopback HOST without API_TOKEN.")
    # Dagster's own storage; unset: the embedded server's `dagster` database, or DATABASE_URL itself.
    dagster_database_url: str | None = None
    simulator_port: int = Field(4010, ge=1, le=65535)
    db_pool_max_size: int = Field(10, ge=1, le=200)
    # Idle keep-alive of the API's HTTP connections. Longer than common client pools keep idle
    # connections (httpx 5 s, aiohttp 15 s, Node 5 s): the client closes first, so it never sends a
    # request on a connection the server is closing at that moment (a spurious connection error).
    api_keepalive_seconds: int = Field(75, ge=1, le=3600)

    # --- Observability ---------------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object a line.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # /metrics follows API_TOKEN like the API; true opens it to anyone reaching the port.
    metrics_public: bool = False
    # /health/ready fails when a Dagster daemon heartbeat is older than this (it beats every 30 s).
    ready_daemon_max_age_seconds: int = Field(120, ge=30)

    # --- RabbitMQ -------------------------------------------------------------------------------
    rabbitmq_url: str | None = None
    rabbitmq_input_queue: str | None = None
    # Queue-name prefixes a request may ask its result to be published to (comma-separated); empty:
    # any queue the broker user can reach. Set it when clients you do not control submit requests.
    rabbitmq_allowed_queues: str = ""

    # --- Intake ---------------------------------------------------------------------------------
    api_token: SecretStr | None = Field(None, description="When set, the API and UI require it.")
    custom_id_max_length: int = Field(512, ge=1, le=512)  # 512 x 4 UTF-8 bytes fits the unique index
    intake_max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    # Each API process keeps a decoder with one field per item (intake_api/body.py): 50,000 cost 32 MB.
    bulk_max_items: int = Field(50_000, ge=1, le=100_000)
    bulk_max_body_bytes: int = Field(256 * 1024 * 1024, ge=1024)

    # --- Batching -------------------------------------------------------------------------------
    batch_max_requests: int = Field(50_000, ge=1, le=50_000)
    batch_max_bytes: int = Field(DEFAULT_BATCH_MAX_BYTES, ge=1024, le=MAX_OPENAI_FILE_BYTES)
    batch_max_age_seconds: int = Field(3600, ge=0)
    sensor_interval_seconds: int = Field(30, ge=1)
    openai_poll_interval_seconds: int = Field(60, ge=0)
    token_estimate_safety_factor: float = Field(1.1, ge=1.0, le=10.0)
    # Lines that failed with server_error / request_timeout / batch_expired go into a new batch, this
    # many times at most; then their error is delivered.
    openai_max_resubmits: int = Field(3, ge=0, le=100)
    # Waits after OpenAI fails a batch with token_limit_exceeded; the requests fail only after the last.
    token_limit_backoff_minutes: str = "5,10,20,40,80"
    status_poll_max_per_tick: int = Field(50, ge=1, le=1000)
    # Delete a batch's OpenAI files once its results are stored (they hold your prompts and outputs).
    openai_delete_files: bool = True
    retention_days: int = Field(30, ge=1)
    dagster_run_retention_days: int = Field(30, ge=1)
    # Prices for the cost and savings figures; unset: the table shipped in batch_pipeline/prices.json.
    model_prices_file: Path | None = Field(None, description="A JSON file shaped like prices.json.")

    # --- Delivery -------------------------------------------------------------------------------
    disable_delivery_retry: bool = False
    webhook_signing_secret: SecretStr | None = None
    # Failed checks, failed runs and failed batches are POSTed here (signed with the secret above).
    alert_webhook_url: str | None = Field(None, description="Unset: alerts only go to the batch history.")
    webhook_block_private_networks: bool = False
    webhook_allowed_hosts: str = ""
    # Waits between attempts after a transient failure (seconds, comma-separated); one attempt more than
    # entries. The default (Svix's) spans about 27 h: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    delivery_retry_schedule_seconds: str = "5,300,1800,7200,18000,36000,36000"
    delivery_retry_jitter: float = Field(0.2, ge=0.0, le=1.0, description="Each wait is scaled by 1 ± this.")
    delivery_concurrency: int = Field(32, ge=1, le=1024, description="Sends in flight per delivery run.")
    delivery_claim_batch_size: int = Field(500, ge=1, le=50_000)
    delivery_claim_lease_seconds: int = Field(900, ge=10, description="A crashed run's claims are due after.")
    delivery_sensor_max_runs: int = Field(20, ge=1, le=1000, description="Delivery runs launched per tick.")
    webhook_connect_timeout_seconds: float = Field(10.0, gt=0)
    webhook_read_timeout_seconds: float = Field(15.0, gt=0)
    rabbitmq_publish_window: int = Field(1000, ge=1, le=100_000, description="Unconfirmed publishes.")
    rabbitmq_confirm_timeout_seconds: float = Field(30.0, gt=0)
    rabbitmq_intake_prefetch: int = Field(1000, ge=1, le=65_535)
    rabbitmq_intake_batch_size: int = Field(500, ge=1, le=50_000)

    @field_validator("delivery_retry_schedule_seconds")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        try:
            steps = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError("must be comma-separated seconds, e.g. 5,300,1800") from None
        if any(s < 0 for s in steps):
            raise ValueError("waits must not be negative")
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_not_empty(cls, value: object) -> object:
        # Path("") is the current directory: the database and Dagster's files would land wherever the
        # service happens to be started. Unset means ./data; empty is a mistake.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (unset it for the default, ./data)")
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        return normalize_database_url(value)

    @field_validator(
        "openai_api_key",
        "openai_webhook_secret",
        "api_token",
        "webhook_signing_secret",
        "alert_webhook_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_signing_secret")
    @classmethod
    def _signing_secret_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked at start: a bad secret would otherwise fail every delivery run, over and over.
        if value is not None:
            try:
                decode_signing_secret(value.get_secret_value())
            except SigningSecretError as exc:
                raise ValueError(str(exc).removeprefix("WEBHOOK_SIGNING_SECRET ")) from None
        return value

    @field_validator("dagster_database_url", mode="before")
    @classmethod
    def _dagster_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        return dagster_storage_url(normalize_database_url(value))

    @field_validator(
        "rabbitmq_url", "rabbitmq_input_queue", "openai_base_url", "model_prices_file", mode="before"
    )
    @classmethod
    def _empty_str_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _short_defaults_on_simulator(self) -> Settings:
        # On the simulator a newcomer's first request should reach its webhook within about a minute,
        # so timings the user did not set are shortened.
        if self.simulator_mode:
            for name, value in SIM_MODE_DEFAULTS.items():
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, value)
        return self

    @model_validator(mode="after")
    def _lease_outlasts_two_chunks(self) -> Settings:
        # A delivery run sends one chunk while holding the claim on the next, so a claim must outlast
        # two chunks sent at their slowest; a lease that ran out mid-send would let another run send
        # the same requests again.
        rounds = -(-self.delivery_claim_batch_size // self.delivery_concurrency)
        slowest = 2 * rounds * (self.webhook_connect_timeout_seconds + self.webhook_read_timeout_seconds)
        if self.delivery_claim_lease_seconds < slowest + 60:
            raise ValueError(
                f"DELIVERY_CLAIM_LEASE_SECONDS must be at least {int(slowest) + 60} s with these "
                "DELIVERY_CLAIM_BATCH_SIZE, DELIVERY_CONCURRENCY and webhook timeouts"
            )
        return self

    @property
    def openai_client_base_url(self) -> str:
        """Where the OpenAI client points: OPENAI_BASE_URL, else the simulator in simulator mode."""
        if self.openai_base_url:
            return self.openai_base_url
        if self.simulator_mode:
            return f"http://127.0.0.1:{self.simulator_port}/v1"
        return "https://api.openai.com/v1"

    @field_validator("openai_mode")
    @classmethod
    def _mode_has_its_key(cls, value: str, info: ValidationInfo) -> str:
        if value == "openai" and info.data.get("openai_api_key") is None:
            raise ValueError("OPENAI_MODE=openai needs OPENAI_API_KEY (unset it, or use auto or simulator)")
        return value

    @property
    def simulator_mode(self) -> bool:
        """True when everything talks to the built-in simulator (OPENAI_MODE, else no key)."""
        return self.openai_mode == "simulator" or (self.openai_mode == "auto" and self.openai_api_key is None)

    @field_validator("token_limit_backoff_minutes")
    @classmethod
    def _backoff(cls, value: str) -> str:
        try:
            steps = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError("must be comma-separated minutes, e.g. 5,10,20") from None
        if not steps or any(s <= 0 for s in steps):
            raise ValueError("needs at least one positive wait")
        return value

    @property
    def token_limit_backoff(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.token_limit_backoff_minutes.split(",") if v.strip())

    @property
    def delivery_retry_schedule(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.delivery_retry_schedule_seconds.split(",") if v.strip())

    @property
    def allowed_webhook_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip())

    @property
    def allowed_queue_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.rabbitmq_allowed_queues.split(",") if p.strip())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an interface to listen on) is reachable from this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or 0.0.0.0-like wildcard: assume it is reachable from elsewhere


def exposure_error(settings: Settings, host: str) -> str | None:
    """Why the API may not listen on ``host`` with these settings, or None when it may."""
    if is_loopback(host) or settings.api_token is not None or settings.allow_unauthenticated:
        return None
    return (
        f"HOST={host} is reachable from other machines but API_TOKEN is not set: anyone reaching it "
        "could spend your OpenAI key and read every result. Set API_TOKEN, or listen on 127.0.0.1, "
        "or set ALLOW_UNAUTHENTICATED=true if something in front of it (a proxy) does the checking."
    )


def _mask_passwords(value: object) -> object:
    """``value`` with the passwords in its strings replaced by ``***`` (containers are walked)."""
    if isinstance(value, str):
        return _PARAM_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", value))
    if isinstance(value, dict):
        return {_mask_passwords(k): _mask_passwords(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return type(value)(_mask_passwords(v) for v in value)
    return value


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning pydantic's report into one line per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "configuration"
            shown = "***" if _SECRET_HINT.search(name) else repr(_mask_passwords(err.get("input")))
            lines.append(f"{name}: {_mask_passwords(err['msg'])} (got {shown})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
