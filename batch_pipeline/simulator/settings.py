"""Simulator configuration: every knob is an environment variable with the ``SIMULATOR_`` prefix.

The fault knobs live in :class:`FaultConfig` so the control surface (``PUT /_sim/faults``) can change them at
runtime with the same validation; :class:`SimulatorSettings` adds the static knobs on top, and
:class:`RuntimeFaults` the settings only the control surface sets (no variable).
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
    """A ``SIMULATOR_*`` variable holds a value we cannot run with; the message names the variable.

    ``fields`` names the settings at fault (``PUT /_sim/faults`` reports the first as ``param``)."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def parse_pairs(value: Any, pair: str = "model=limit") -> Any:
    """Accept a JSON object (``{"gpt-4o-mini": 2000000}``) or ``key=value,…`` pairs; empty is none."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return json.loads(text)
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, number = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected a JSON object or {pair} pairs, got {item.strip()!r}")
        pairs[key.strip()] = number.strip()
    return pairs


def parse_token_limits(value: Any) -> Any:
    return parse_pairs(value, "model=limit")


# The calls whose answer ``drop_response_next`` can lose after they ran: the ones that create or
# change something, so a client that never hears back has to find out what happened.
DROP_RESPONSE_OPERATIONS = ("files.create", "batches.create", "batches.cancel")


def parse_drop_response_next(value: Any) -> dict[str, int]:
    """``{"batches.create": 1}`` (or ``batches.create=1``): every known operation, unnamed ones 0."""
    value = parse_pairs(value, "operation=count")
    if not isinstance(value, dict):
        raise ValueError('expected an object of operation counts, e.g. {"batches.create": 1}')
    counts = dict.fromkeys(DROP_RESPONSE_OPERATIONS, 0)
    for key, count in value.items():
        if key not in counts:
            raise ValueError(f"unknown operation {key!r}; known: {', '.join(DROP_RESPONSE_OPERATIONS)}")
        if isinstance(count, str) and count.strip().isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{key!r} must be a non-negative integer, got {count!r}")
        counts[key] = count
    return counts


# The calls ``fail_next`` can fault, by the SDK's name for them (``http_faults.operation``).
OPERATIONS = (
    "files.create",
    "files.list",
    "files.retrieve",
    "files.content",
    "files.delete",
    "batches.create",
    "batches.list",
    "batches.retrieve",
    "batches.cancel",
)


class FailNext(BaseModel):
    """The next ``count`` calls of one operation meet ``fault`` (an ``x-sim-http-fault`` value):
    ``429``/``500``/``503`` answer that error, ``drop`` hangs up before the route runs, ``drop_after``
    runs it and hangs up, ``slow`` runs it and holds the answer back ``seconds`` (default
    ``slow_seconds``), so a client with a shorter timeout times out, or a killed one never hears."""

    model_config = ConfigDict(extra="forbid")

    fault: Literal["429", "500", "503", "drop", "drop_after", "slow"]
    count: int = Field(1, ge=0)
    seconds: float | None = Field(None, ge=0.0, le=3600.0)

    @field_validator("fault", mode="before")
    @classmethod
    def _status_as_text(cls, value: Any) -> Any:
        # {"fault": 500} reads as naturally as {"fault": "500"}.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _known_operations(value: dict[str, FailNext]) -> dict[str, FailNext]:
    for key in value:
        if key not in OPERATIONS:
            raise ValueError(f"unknown operation {key!r}; known: {', '.join(OPERATIONS)}")
    return value


class FaultConfig(BaseModel):
    """Fault rates and limits that may change while the simulator runs (see ``PUT /_sim/faults``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    http_429_rate: Rate = Field(0.0, description="Share of /v1 requests answered 429 with Retry-After.")
    http_500_rate: Rate = Field(0.0, description="Share of /v1 requests answered 500.")
    http_503_rate: Rate = Field(0.0, description="Share of /v1 requests answered 503.")
    drop_rate: Rate = Field(0.0, description="Share of /v1 requests whose connection is closed unanswered.")
    slow_rate: Rate = Field(
        0.0,
        description="Share of /v1 requests whose answer is held back slow_seconds (the route runs first).",
    )
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


class RuntimeFaults(FaultConfig):
    """The fault settings the running simulator holds: the environment's, plus countdowns that only
    ``PUT /_sim/faults`` sets (a test arms them for the calls it is about to make)."""

    drop_response_next: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(DROP_RESPONSE_OPERATIONS, 0),
        description="Per operation (files.create, batches.create, batches.cancel): the next N such calls "
        "run, then their answer is lost (the connection is closed). Counts down as used.",
    )

    fail_next: dict[str, FailNext] = Field(
        default_factory=dict,
        description="Per operation (files.create, files.list, files.retrieve, files.content, files.delete, "
        'batches.create, batches.list, batches.retrieve, batches.cancel): {"fault", "count", "seconds"}, '
        "the next `count` such calls meet that fault. Counts down as used.",
    )

    @field_validator("drop_response_next", mode="before")
    @classmethod
    def _drop_response_next(cls, value: Any) -> dict[str, int]:
        return parse_drop_response_next(value)

    @field_validator("fail_next")
    @classmethod
    def _fail_next(cls, value: dict[str, FailNext]) -> dict[str, FailNext]:
        return _known_operations(value)


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

    def fault_config(self) -> RuntimeFaults:
        """The fault settings a fresh (or reset) simulator starts with."""
        return RuntimeFaults(**self.model_dump(include=set(FaultConfig.model_fields)))


def _describe(exc: ValidationError, runtime: bool = False) -> str:
    """One line per problem, naming the variable (and, for a runtime change, the field as sent)."""
    lines = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        if loc:
            name = env_name(str(loc[0]))
            if runtime:  # the field as sent, and its variable if it has one
                path = "".join(f"[{part!r}]" for part in loc[1:])
                runtime_only = loc[0] in RuntimeFaults.model_fields and loc[0] not in FaultConfig.model_fields
                name = f"{loc[0]}{path}" + ("" if runtime_only else f" ({name})")
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message} (got {err.get('input')!r})")
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


def load_fault_config(current: RuntimeFaults, changes: dict[str, Any]) -> RuntimeFaults:
    """Apply a partial update; the error message names the environment variable behind each field."""
    try:
        return RuntimeFaults(**{**current.model_dump(), **changes})
    except ValidationError as exc:
        fields = tuple(str(err["loc"][0]) for err in exc.errors() if err.get("loc"))
        raise SimulatorConfigError(_describe(exc, runtime=True), fields) from None
