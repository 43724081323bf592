"""Settings come from the environment; a bad one stops the service with the variable named."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from forgeline_kit.settings import (
    DatabaseUrl,
    LogFormat,
    RenamedSetting,
    ServiceSettings,
    SettingsError,
    load_settings,
    renamed_variables_in_use,
    settings_help,
)
from forgeline_kit.sqlite import sqlite_url

from .conftest import StartService
from .echo_service import EchoSettings
from .harness import ECHO_SERVICE


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("FORGELINE_ECHO_", "FORGELINE_STORE_")):
            monkeypatch.delenv(name)


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_ECHO_GRPC_PORT", "7001")
    monkeypatch.setenv("FORGELINE_ECHO_LOG_LEVEL", "debug")
    monkeypatch.setenv("FORGELINE_ECHO_LOG_FORMAT", "JSON")
    monkeypatch.setenv("FORGELINE_ECHO_GREETING", "hey ")

    settings = load_settings(EchoSettings)

    assert settings.grpc_port == 7001
    assert settings.grpc_host == "127.0.0.1"
    assert settings.log_level == "DEBUG"
    assert settings.log_format is LogFormat.JSON
    assert settings.greeting == "hey "
    assert EchoSettings.env_var("metrics_port") == "FORGELINE_ECHO_METRICS_PORT"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "FORGELINE_ECHO_GRPC_PORT",
            "abc",
            "FORGELINE_ECHO_GRPC_PORT='abc' is not a valid port: expected an integer 0-65535",
        ),
        (
            "FORGELINE_ECHO_METRICS_PORT",
            "70000",
            "FORGELINE_ECHO_METRICS_PORT='70000' is not a valid port",
        ),
        ("FORGELINE_ECHO_LOG_LEVEL", "loud", "FORGELINE_ECHO_LOG_LEVEL='loud' is not valid"),
        ("FORGELINE_ECHO_LOG_FORMAT", "xml", "FORGELINE_ECHO_LOG_FORMAT='xml' is not valid"),
        (
            "FORGELINE_ECHO_SHUTDOWN_GRACE_SECONDS",
            "-1",
            "FORGELINE_ECHO_SHUTDOWN_GRACE_SECONDS='-1' is not valid: input should be greater",
        ),
        (
            "FORGELINE_ECHO_GRPC_PROT",
            "1",
            "FORGELINE_ECHO_GRPC_PROT is not a setting of this service; "
            "did you mean FORGELINE_ECHO_GRPC_PORT?",
        ),
    ],
)
def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as failure:
        load_settings(EchoSettings)
    assert len(failure.value.problems) == 1
    assert failure.value.problems[0].startswith(expected)
    assert "pydantic" not in str(failure.value)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_ECHO_GRPC_PORT", "abc")
    monkeypatch.setenv("FORGELINE_ECHO_METRICS_PORT", "-5")
    with pytest.raises(SettingsError) as failure:
        load_settings(EchoSettings)
    assert [p.split("=")[0] for p in failure.value.problems] == [
        "FORGELINE_ECHO_GRPC_PORT",
        "FORGELINE_ECHO_METRICS_PORT",
    ]


def test_a_bad_setting_stops_the_service_at_start(start_service: StartService) -> None:
    service = start_service({"FORGELINE_ECHO_GRPC_PORT": "abc"}, wait=False)
    code = service.wait(60)
    assert code == 2
    assert service.output.splitlines() == [
        "forgeline-echo: invalid configuration:",
        "  FORGELINE_ECHO_GRPC_PORT='abc' is not a valid port: "
        "expected an integer 0-65535 (0 picks a free port)",
    ]


def test_a_port_in_use_stops_the_service_naming_the_variable(
    start_service: StartService,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = start_service({"FORGELINE_ECHO_METRICS_PORT": str(port)}, wait=False)
        code = service.wait(60)

    assert code == 1
    (error,) = [r for r in service.records() if r["level"] == "ERROR"]
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in error["message"]
    assert "FORGELINE_ECHO_METRICS_PORT" in error["message"]


def test_a_grpc_port_in_use_stops_the_second_instance(start_service: StartService) -> None:
    first = start_service()
    second = start_service({"FORGELINE_ECHO_GRPC_PORT": str(first.grpc_port)}, wait=False)
    assert second.wait(60) == 1
    (error,) = [r for r in second.records(strict=False) if r["level"] == "ERROR"]
    assert f"cannot listen for gRPC on 127.0.0.1:{first.grpc_port}" in error["message"]
    assert "FORGELINE_ECHO_GRPC_PORT" in error["message"]


def _run_echo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, str(ECHO_SERVICE), *args],
        capture_output=True, text=True, check=False, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_help_lists_every_variable_with_its_default_and_serves_nothing() -> None:
    done = _run_echo("--help")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: forgeline-echo\n")
    for field in EchoSettings.model_fields:
        assert f"  {EchoSettings.env_var(field)} (" in done.stdout
    assert "  FORGELINE_ECHO_GRPC_PORT (default '50051')\n      gRPC port" in done.stdout
    assert "serving" not in done.stderr


def test_a_command_line_option_is_refused_with_where_settings_go() -> None:
    done = _run_echo("--grpc-port", "7000")

    assert done.returncode == 2
    assert done.stderr.strip() == (
        "forgeline-echo: unexpected argument '--grpc-port': settings come from "
        "FORGELINE_ECHO_* environment variables (forgeline-echo --help lists them)"
    )


# A variable renamed in a release (FORGELINE_ECHO_SALUTATION, now GREETING) is still read for one
# more, with a warning at start, so an upgrade keeps the configuration it had.


def test_a_renamed_variable_is_still_read_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_ECHO_SALUTATION", "hello ")

    assert load_settings(EchoSettings).greeting == "hello "
    assert renamed_variables_in_use(EchoSettings) == [
        "FORGELINE_ECHO_SALUTATION is deprecated and will stop being read in a coming release: "
        "set FORGELINE_ECHO_GREETING instead (FORGELINE_ECHO_GREETING=hello  is the same setting)"
    ]
    assert "  FORGELINE_ECHO_SALUTATION (deprecated: use FORGELINE_ECHO_GREETING)" in (
        settings_help(EchoSettings)
    )


def test_the_new_name_wins_over_a_renamed_one_that_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_ECHO_SALUTATION", "hi ")
    monkeypatch.setenv("FORGELINE_ECHO_GREETING", "hi ")

    assert load_settings(EchoSettings).greeting == "hi "
    assert renamed_variables_in_use(EchoSettings) == [
        "FORGELINE_ECHO_SALUTATION is deprecated and says what FORGELINE_ECHO_GREETING says: "
        "remove it"
    ]
    # Settings given in code win over both, as over any variable.
    assert EchoSettings(greeting="yo ").greeting == "yo "


def test_a_renamed_variable_that_disagrees_with_its_new_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Which one the operator meant is not for the service to guess: for a database setting, the
    # new name's value (an image default) over an old one set by hand would lose the state.
    monkeypatch.setenv("FORGELINE_ECHO_SALUTATION", "hi ")
    monkeypatch.setenv("FORGELINE_ECHO_GREETING", "hey ")

    with pytest.raises(SettingsError) as refused:
        load_settings(EchoSettings)
    assert refused.value.problems == [
        "FORGELINE_ECHO_SALUTATION (deprecated) and FORGELINE_ECHO_GREETING are both set and "
        "disagree: set only FORGELINE_ECHO_GREETING (FORGELINE_ECHO_GREETING=hi  is what "
        "FORGELINE_ECHO_SALUTATION says)"
    ]


def test_no_renamed_variable_no_warning() -> None:
    assert load_settings(EchoSettings).greeting == ""
    assert renamed_variables_in_use(EchoSettings) == []


def test_a_service_warns_at_start_of_a_renamed_variable(start_service: StartService) -> None:
    service = start_service({"FORGELINE_ECHO_SALUTATION": "hi "})

    (warning,) = [r for r in service.records(strict=False) if r["level"] == "WARNING"]
    assert warning["message"].startswith(
        "FORGELINE_ECHO_SALUTATION is deprecated and will stop being read in a coming release: "
        "set FORGELINE_ECHO_GREETING instead"
    )


class StoreSettings(ServiceSettings):
    """A service keeping its state in a database, whose setting was once a file path."""

    model_config = SettingsConfigDict(env_prefix="FORGELINE_STORE_")
    renamed_settings = (RenamedSetting("state_db", "database_url", sqlite_url),)

    database_url: DatabaseUrl = Field("sqlite:///.forgeline/store.db")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "mysql://forgeline:s3cret@db:3306/forgeline",
            "FORGELINE_STORE_DATABASE_URL='mysql://forgeline:***@db:3306/forgeline' is "
            "refused: mysql:// is not supported: expected sqlite:///relative/path or "
            "sqlite:////absolute/path (or postgresql://USER:PASSWORD@HOST/DATABASE)",
        ),
        (
            "/var/lib/forgeline/store.db",
            "FORGELINE_STORE_DATABASE_URL='/var/lib/forgeline/store.db' is refused: not a "
            "database URL: a SQLite file is written sqlite:///relative/path or "
            "sqlite:////absolute/path (or postgresql://USER:PASSWORD@HOST/DATABASE)",
        ),
    ],
)
def test_a_bad_database_url_is_named_with_what_is_accepted(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("FORGELINE_STORE_DATABASE_URL", value)

    with pytest.raises(SettingsError) as refused:
        load_settings(StoreSettings)
    assert refused.value.problems == [expected]


def test_an_old_path_setting_becomes_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_STORE_STATE_DB", "/srv/store.db")
    assert load_settings(StoreSettings).database_url == "sqlite:////srv/store.db"

    monkeypatch.setenv("FORGELINE_STORE_STATE_DB", "relative/store.db")
    assert load_settings(StoreSettings).database_url == "sqlite:///relative/store.db"
