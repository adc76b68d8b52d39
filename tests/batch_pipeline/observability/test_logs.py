"""LOG_FORMAT: the JSON and text lines, the ids they carry, and secrets kept out of both."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batch_pipeline.observability import logs
from tests.conftest import make_settings

SECRETS = {
    "api_token": "api-token-value-123",
    "openai_api_key": "sk-live-abcdefghijkl",
    "database_url": "postgresql://app:db-pass-456@db.internal:5432/batchman",
    "rabbitmq_url": "amqp://user:rabbit-pass-789@mq:5672/%2F",
}


@pytest.fixture
def output(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Our handler, in the format the test is parametrized with, writing to a buffer."""
    settings = make_settings(tmp_path, log_format=request.param, **SECRETS)
    logs.configure_logging(settings)
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "batchman")
    buffer = io.StringIO()
    handler.setStream(buffer)
    yield buffer
    logs.configure_logging(None)


@pytest.mark.parametrize("output", ["json"], indirect=True)
def test_json_lines_carry_level_time_logger_message_and_ids(output: io.StringIO) -> None:
    log = logging.getLogger("batchman.test")
    with logs.log_context(request_id="r-1", batch_id=7):
        with logs.log_context(custom_id="c-9"):
            log.warning("stored %d lines", 3, extra={"run_id": "run-abc"})
        log.info("outside the inner block")
    log.info("no context")
    first, second, third = (orjson.loads(line) for line in output.getvalue().splitlines())
    assert first["level"] == "warning"
    assert first["logger"] == "batchman.test"
    assert first["message"] == "stored 3 lines"
    assert first["time"].endswith("+00:00")
    assert {k: first[k] for k in ("request_id", "batch_id", "custom_id", "run_id")} == {
        "request_id": "r-1",
        "batch_id": 7,
        "custom_id": "c-9",
        "run_id": "run-abc",
    }
    assert "custom_id" not in second and second["batch_id"] == 7
    assert set(third) == {"time", "level", "logger", "message"}


@pytest.mark.parametrize("output", ["json"], indirect=True)
def test_concurrent_tasks_keep_their_own_ids(output: io.StringIO) -> None:
    log = logging.getLogger("batchman.test")

    async def handle(request_id: str) -> None:
        with logs.log_context(request_id=request_id):
            await asyncio.sleep(0)  # lets the other task run inside its own block
            log.info("done")

    async def both() -> None:
        await asyncio.gather(handle("a"), handle("b"))

    asyncio.run(both())
    lines = [orjson.loads(line) for line in output.getvalue().splitlines()]
    assert sorted(line["request_id"] for line in lines) == ["a", "b"]


@pytest.mark.parametrize("output", ["json", "text"], indirect=True)
def test_secrets_never_reach_the_output(output: io.StringIO) -> None:
    log = logging.getLogger("batchman.test")
    log.info("token %s key %s", SECRETS["api_token"], SECRETS["openai_api_key"])
    log.info("connecting to %s and %s", SECRETS["database_url"], SECRETS["rabbitmq_url"])
    log.info("webhook https://hooks.example.com/in?sig=hook-query-secret&x=1 answered 500")
    log.info("GET /api/requests?api_key=path-query-secret")
    try:
        raise RuntimeError(f"failed with {SECRETS['api_token']}")
    except RuntimeError:
        log.exception("boom")
    text = output.getvalue()
    for secret in ("api-token-value-123", "sk-live-abcdefghijkl", "db-pass-456", "rabbit-pass-789"):
        assert secret not in text
    assert "hook-query-secret" not in text and "path-query-secret" not in text
    assert "db.internal" in text and "hooks.example.com/in" in text  # the rest stays readable
    assert "x=1" in text


@pytest.mark.parametrize("output", ["text"], indirect=True)
def test_text_lines_name_the_ids_after_the_message(output: io.StringIO) -> None:
    with logs.log_context(batch_id=12):
        logging.getLogger("batchman.test").info("uploaded")
    line = output.getvalue().strip()
    assert line.endswith("INFO batchman.test: uploaded [batch_id=12]")


def test_configuring_again_replaces_only_our_handler(tmp_path: Path) -> None:
    other = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(other)
    try:
        logs.configure_logging(make_settings(tmp_path, log_format="json"))
        logs.configure_logging(make_settings(tmp_path, log_format="text"))
        ours = [h for h in root.handlers if h.get_name() == "batchman"]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.TextFormatter)
        assert other in root.handlers  # a test runner's (or anyone's) handler stays
    finally:
        root.removeHandler(other)
        logs.configure_logging(None)


def test_log_format_is_checked(tmp_path: Path) -> None:
    from batch_pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        make_settings(tmp_path, log_format="xml")


def test_the_handler_writes_to_the_stderr_of_the_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configured once (as at a module's import), it follows sys.stderr when a test runner swaps it."""
    logs.configure_logging(make_settings(tmp_path, log_format="json"))
    try:
        for _ in range(2):
            now = io.StringIO()
            monkeypatch.setattr("sys.stderr", now)
            logging.getLogger("batchman.test").warning("here")
            assert orjson.loads(now.getvalue())["message"] == "here"
    finally:
        logs.configure_logging(None)


@pytest.mark.parametrize("output", ["json"], indirect=True)
def test_a_dagster_run_line_names_its_run_and_batch(output: io.StringIO) -> None:
    meta = {"run_id": "run-1", "job_tags": {"batch_id": "42", "stage": "upload"}, "orig_message": "m"}
    logging.getLogger("dagster.builtin").warning("stored", extra={"dagster_meta": meta})
    line = orjson.loads(output.getvalue())
    assert (line["run_id"], line["batch_id"]) == ("run-1", "42")


def test_dagsters_own_loggers_go_through_ours(tmp_path: Path) -> None:
    """The code server and run workers configure after Dagster's CLI gave its loggers handlers."""
    dagster_logger = logging.getLogger("dagster")
    dagster_logger.addHandler(logging.NullHandler())
    try:
        logs.configure_logging(make_settings(tmp_path, log_format="json"))
        assert dagster_logger.handlers == [] and dagster_logger.propagate
    finally:
        logs.configure_logging(None)
