"""Simulator configuration: every knob is an environment variable with the ``SIMULATOR_`` prefix.

The fault knobs live in :class:`FaultConfig` so the control surface (``PUT /_sim/faults``) can change them at
runtime with the same validation; :class:`SimulatorSettings` adds the static knobs on top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

ENV_PREFIX = "SIMULATOR_"

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class SimulatorConfigError(RuntimeError):
    """A ``SIMULATOR_*`` variable holds a value we cannot run with; the message names the variable."""


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def parse_token_limits(value: Any) -> Any:
    """Accept a JSON object (``{"gpt-4o-mini": 2000000}``) or ``model=limit,…`` pairs; empty is none."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return json.loads(text)
    limits: dict[str, str] = {}
    for item in text.split(","):
        model, sep, limit = item.partition("=")
        if not sep or not model.strip():
            raise ValueError(f"expected a JSON object or model=limit pairs, got {item.strip()!r}")
        limits[model.strip()] = limit.strip()
    return limits


class FaultConfig(BaseModel):
    """Fault rates and limits that may change while the simulator runs (see ``PUT /_sim/faults``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    http_429_rate: Rate = Field(0.0, description="Share of /v1 requests answered 429 with Retry-After.")
    http_500_rate: Rate = Field(0.0, description="Share of /v1 requests answered 500.")
    http_503_rate: Rate = Field(0.0, description="Share of /v1 requests answered 503.")
    drop_rate: Rate = Field(0.0, description="Share of /v1 requests whose connection is closed unanswered.")
    slow_rate: Rate = Field(0.0, description="Share of /v1 requests delayed by slow_seconds first.")
    slow_seconds: float = Field(2.0, ge=0.0, le=600.0, description="Delay of a slow response.")
    retry_after_seconds: int = Field(1, ge=0, le=3600, description="Retry-After header value on 429.")
    line_server_error_rate: Rate = Field(0.0, description="Share of batch lines that fail with HTTP 500.")
    line_timeout_rate: Rate = Field(0.0, description="Share of batch lines that fail with request_timeout.")
    create_token_limit_refusals: int = Field(
        0, ge=0, description="The next N batch create calls are refused with 400 token_limit_exceeded."
    )
    token_limits: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, description="Per-model enqueued-token limit; a model not listed is unlimited."
    )

    @field_validator("token_limits", mode="before")
    @classmethod
    def _token_limits(cls, value: Any) -> Any:
        return parse_token_limits(value)

    @field_validator("token_limits")
    @classmethod
    def _positive_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for model, limit in value.items():
            if limit < 1:
                raise ValueError(f"limit for {model!r} must be a positive integer, got {limit}")
        return value

    @model_validator(mode="after")
    def _rates_fit(self) -> FaultConfig:
        # One uniform draw picks at most one HTTP fault, so their shares must fit in 100 %.
        http = self.drop_rate + self.http_429_rate + self.http_500_rate + self.http_503_rate
        if http > 1.0 + 1e-9:
            raise ValueError(
                "SIMULATOR_DROP_RATE + SIMULATOR_HTTP_429_RATE + SIMULATOR_HTTP_500_RATE + "
                f"SIMULATOR_HTTP_503_RATE must not exceed 1 (got {http:g})"
            )
        lines = self.line_server_error_rate + self.line_timeout_rate
        if lines > 1.0 + 1e-9:
            raise ValueError(
                "SIMULATOR_LINE_SERVER_ERROR_RATE + SIMULATOR_LINE_TIMEOUT_RATE must not exceed 1 "
                f"(got {lines:g})"
            )
        return self


class SimulatorSettings(BaseSettings, FaultConfig):
    """All simulator knobs; read from ``SIMULATOR_*`` environment variables (and ``.env``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", case_sensitive=False, validate_assignment=True
    )

    host: str = Field("127.0.0.1", description="Interface `python -m batch_pipeline.simulator` binds to.")
    port: int = Field(4010, ge=0, le=65535, description="Port `python -m batch_pipeline.simulator` uses.")
    data_dir: Path | None = Field(
        None, description="Spool for uploaded and generated files; unset: temp dir."
    )
    persist: bool = Field(
        True, description="Keep state in DATA_DIR/state.json across restarts (DATA_DIR set)."
    )
    freeze_clock: bool = Field(False, description="Time only moves through POST /_sim/advance.")
    validating_seconds: float = Field(1.0, ge=0.0, description="Time a batch spends in validating.")
    in_progress_seconds: float = Field(3.0, ge=0.0, description="Time a batch spends in in_progress.")
    finalizing_seconds: float = Field(1.0, ge=0.0, description="Time a batch spends in finalizing.")
    cancelling_seconds: float = Field(1.0, ge=0.0, description="Time a batch spends in cancelling.")
    completion_window_seconds: float = Field(86400.0, gt=0.0, description="The '24h' window; then expired.")
    file_expiry_seconds: int = Field(
        30 * 86400, ge=1, description="Default expiry of batch and output files."
    )
    max_file_bytes: int = Field(200_000_000, ge=1, description="Largest accepted purpose=batch upload.")
    max_requests_per_batch: int = Field(50_000, ge=1, description="Most request lines in one input file.")
    max_embedding_inputs: int = Field(50_000, ge=1, description="Most embedding inputs in one batch.")
    require_api_key: bool = Field(True, description="Answer 401 to /v1 calls without a Bearer token.")
    seed: int = Field(0, description="Seed of the random draws behind every *_RATE knob.")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="Log level used by serve()."
    )

    @field_validator("data_dir", mode="before")
    @classmethod
    def _empty_data_dir_is_unset(cls, value: Any) -> Any:
        # Path("") would be the current directory; an empty SIMULATOR_DATA_DIR= line means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    def fault_config(self) -> FaultConfig:
        return FaultConfig(**self.model_dump(include=set(FaultConfig.model_fields)))


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        if loc:
            lines.append(f"{env_name(str(loc[0]))}: {err['msg']} (got {err.get('input')!r})")
        else:
            # Cross-field checks already name their variables in the message.
            lines.append(str(err["msg"]).removeprefix("Value error, "))
    return "invalid simulator configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> SimulatorSettings:
    """Build settings from the environment, turning pydantic's report into one line per bad variable."""
    try:
        return SimulatorSettings(**overrides)
    except ValidationError as exc:
        raise SimulatorConfigError(_describe(exc)) from None
    except SettingsError as exc:
        # pydantic-settings raises this before validation, e.g. for malformed JSON in a complex field.
        raise SimulatorConfigError(f"invalid simulator configuration: {exc}") from None


def load_fault_config(current: FaultConfig, changes: dict[str, Any]) -> FaultConfig:
    """Apply a partial update; the error message names the environment variable behind each field."""
    try:
        return FaultConfig(**{**current.model_dump(), **changes})
    except ValidationError as exc:
        raise SimulatorConfigError(_describe(exc)) from None
