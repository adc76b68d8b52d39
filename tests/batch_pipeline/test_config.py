"""Settings: defaults, seed variable names, URL schemes, simulator defaults, errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_pipeline.config import (
    DEFAULT_BATCH_MAX_BYTES,
    SIM_MODE_DEFAULTS,
    ConfigError,
    Settings,
    load_settings,
    normalize_database_url,
)

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OPENAI_API_KEY",
        "DATABASE_URL",
        "PORT",
        "BATCH_MAX_AGE_SECONDS",
        "SENSOR_INTERVAL_SECONDS",
        "DAGSTER_DATABASE_URL",
        "RABBITMQ_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def settings(**env: str):
    return load_settings(_env_file=None, **env)


def test_defaults_with_a_real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    s = settings()
    assert (s.port, s.dagster_port) == (4000, 3000)
    assert s.batch_max_requests == 50_000
    assert s.batch_max_bytes == DEFAULT_BATCH_MAX_BYTES < 200_000_000
    assert s.batch_max_age_seconds == 3600
    assert s.sensor_interval_seconds == 30
    assert s.openai_poll_interval_seconds == 60
    assert str(s.data_dir) == "data"
    assert not s.simulator_mode
    assert s.openai_client_base_url == "https://api.openai.com/v1"


def test_simulator_mode_shortens_only_unset_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_MAX_AGE_SECONDS", "120")
    s = settings()
    assert s.simulator_mode
    assert s.batch_max_age_seconds == 120  # the user's value wins
    assert s.sensor_interval_seconds < 30
    assert s.openai_client_base_url == "http://127.0.0.1:4010/v1"


@pytest.mark.parametrize(
    "url",
    ["postgres://u:p@db:5432/app", "postgresql://u:p@db:5432/app", "ecto://u:p@db:5432/app"],
)
def test_database_url_schemes(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert settings().database_url == "postgresql://u:p@db:5432/app"


def test_unsupported_database_scheme_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u@db/app")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("PORT", "70000"), ("BATCH_MAX_REQUESTS", "50001"), ("BATCH_MAX_BYTES", "300000000")],
)
def test_bad_values_fail_naming_the_variable(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        settings()


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        settings(api_token=["not", "a", "string"])
    assert "API_TOKEN" in str(info.value) and "not" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("DATABASE_URL", "mysql://u:hunter2@h/d", "mysql://u:***@h/d"),
        ("DAGSTER_DATABASE_URL", "mysql://u:hunter2@h/d", "mysql://u:***@h/d"),
        ("DATABASE_URL", "mysql://u@h/d?sslmode=off&password=hunter2", "password=***"),
        ("DATABASE_URL", "mysql://:hunter2@h:5432/d", "mysql://:***@h:5432/d"),
        ("DATABASE_URL", "mysql://u:p@ss/w:rd@hunter2@h/d", "mysql://u:***@h/d"),
    ],
)
def test_database_passwords_are_never_echoed(
    name: str, value: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        settings()
    message = str(info.value)
    assert name in message
    assert "hunter2" not in message and "p@ss" not in message
    assert shown in message  # enough is left to spot the mistake


def test_rabbitmq_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        settings(rabbitmq_url={"url": "amqp://guest:hunter2@rabbit:5672/%2F"})
    message = str(info.value)
    assert "RABBITMQ_URL" in message and "hunter2" not in message
    assert "amqp://guest:***@rabbit:5672/%2F" in message


def test_normalize_keeps_query() -> None:
    assert normalize_database_url("ecto://u@/db?host=/tmp/x") == "postgresql://u@/db?host=/tmp/x"


def _documented_names(text: str) -> set[str]:
    """Names set in the file, or shown commented out (``# NAME=value``: documented, left unset)."""
    import re

    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))


def test_commented_out_lines_count_as_documented() -> None:
    assert _documented_names("A_B=1\n# SENSOR_INTERVAL_SECONDS=30\n#X_Y=\n# prose, NOT=this\n") == {
        "A_B",
        "SENSOR_INTERVAL_SECONDS",
        "X_Y",
    }


def test_env_example_lists_every_setting_and_loads_as_is(tmp_path) -> None:
    """A newcomer copies .env.example to .env: every variable must be there, and the file must load."""
    from batch_pipeline.simulator.settings import ENV_PREFIX, SimulatorSettings

    readme = (ENV_EXAMPLE.parent / "README.md").read_text()
    names = _documented_names(ENV_EXAMPLE.read_text())
    wanted = {f.upper() for f in Settings.model_fields} | {
        f"{ENV_PREFIX}{f}".upper() for f in SimulatorSettings.model_fields
    }
    assert wanted - names == set()
    assert {n for n in wanted if f"`{n}`" not in readme} == set()
    load_settings(_env_file=ENV_EXAMPLE, data_dir=tmp_path)  # nothing in it is refused
    SimulatorSettings(_env_file=ENV_EXAMPLE)


def _without_setting_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of ours (service or simulator) from the developer's environment takes part."""
    from batch_pipeline.simulator.settings import SimulatorSettings, env_name

    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    for field in SimulatorSettings.model_fields:
        monkeypatch.delenv(env_name(field), raising=False)


@pytest.mark.parametrize("key", [None, "sk-test"], ids=["simulator", "openai"])
def test_a_copy_of_env_example_changes_nothing(key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying .env.example to .env gives the settings of no .env at all: on the simulator, the short
    timings (values set in the file would count as the user's and keep the hour-long defaults)."""
    from batch_pipeline.simulator.settings import SimulatorSettings

    _without_setting_env(monkeypatch)
    if key:
        monkeypatch.setenv("OPENAI_API_KEY", key)
    from_example = load_settings(_env_file=ENV_EXAMPLE)
    without = load_settings(_env_file=None)
    assert from_example.simulator_mode is (key is None)
    shortened = {name: getattr(from_example, name) for name in SIM_MODE_DEFAULTS}
    assert shortened == {name: getattr(without, name) for name in SIM_MODE_DEFAULTS}
    if key is None:
        assert shortened == SIM_MODE_DEFAULTS
    assert from_example.model_dump() == without.model_dump()
    assert SimulatorSettings(_env_file=ENV_EXAMPLE) == SimulatorSettings(_env_file=None)


def test_commented_out_lines_of_env_example_show_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncommented, a ``# NAME=value`` line of a service setting sets it to its default (with a key,
    where nothing is shortened)."""
    import re

    _without_setting_env(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    ours = "|".join(name.upper() for name in Settings.model_fields)
    uncommented = re.sub(rf"^#\s*(({ours})=)", r"\1", ENV_EXAMPLE.read_text(), flags=re.M)
    assert uncommented != ENV_EXAMPLE.read_text()  # the timings above are there, commented out
    env_file = tmp_path / ".env"
    env_file.write_text(uncommented)
    assert load_settings(_env_file=env_file).model_dump() == load_settings(_env_file=None).model_dump()


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_data_dir_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Path("") would be the current directory: the embedded database wherever the service started.
    monkeypatch.setenv("DATA_DIR", value)
    with pytest.raises(ConfigError, match=r"DATA_DIR: .*must not be empty"):
        settings()


def test_an_empty_data_dir_in_env_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("DATA_DIR=\n")
    with pytest.raises(ConfigError, match="DATA_DIR"):
        load_settings(_env_file=env_file)


@pytest.mark.parametrize("secret", ["whsec_not*base64", "whsec_c2hvcnQ="])
def test_a_bad_signing_secret_stops_the_start_without_showing_it(
    secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_SIGNING_SECRET", secret)
    with pytest.raises(ConfigError, match="WEBHOOK_SIGNING_SECRET") as err:
        settings()
    assert secret not in str(err.value)


def test_a_claim_lease_shorter_than_two_slow_chunks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_CONCURRENCY", "8")  # 500 / 8 = 63 rounds of up to 25 s, twice
    with pytest.raises(ConfigError, match="DELIVERY_CLAIM_LEASE_SECONDS must be at least 3210 s"):
        settings()
    monkeypatch.setenv("DELIVERY_CLAIM_LEASE_SECONDS", "3210")
    assert settings().delivery_claim_lease_seconds == 3210


def test_openai_mode_openai_without_a_key_stops_the_start(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"OPENAI_MODE: .*needs OPENAI_API_KEY"):
        load_settings(_env_file=None, data_dir=tmp_path, openai_api_key=None, openai_mode="openai")


def test_openai_mode_simulator_never_sends_the_key(tmp_path) -> None:
    from batch_pipeline import openai_client as oai

    settings = load_settings(
        _env_file=None, data_dir=tmp_path, openai_api_key="sk-real", openai_mode="simulator"
    )
    assert settings.simulator_mode
    options = oai.client_options(settings)
    assert options["api_key"] == oai.SIM_KEY_PLACEHOLDER
    assert options["base_url"] == f"http://127.0.0.1:{settings.simulator_port}/v1"
    auto = load_settings(_env_file=None, data_dir=tmp_path, openai_api_key="sk-real")
    assert not auto.simulator_mode and oai.client_options(auto)["api_key"] == "sk-real"
