"""The converter's database setting: FORGELINE_CONVERTER_DATABASE_URL, and the variable it
replaced, FORGELINE_CONVERTER_STATE_DB (a file path), still read for this release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgeline_converter.settings import ConverterSettings
from forgeline_kit.settings import SettingsError, load_settings, renamed_variables_in_use


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FORGELINE_CONVERTER_"):
            monkeypatch.delenv(name)


def test_the_database_is_where_it_always_was_by_default() -> None:
    settings = load_settings(ConverterSettings)

    assert settings.database_url == "sqlite:///.forgeline/converter/state.db"
    assert settings.database_path == Path(".forgeline/converter/state.db")
    assert renamed_variables_in_use(ConverterSettings) == []


def test_the_old_state_db_variable_is_read_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_CONVERTER_STATE_DB", "/var/lib/forgeline/converter/state.db")

    settings = load_settings(ConverterSettings)

    assert settings.database_path == Path("/var/lib/forgeline/converter/state.db")
    assert renamed_variables_in_use(ConverterSettings) == [
        "FORGELINE_CONVERTER_STATE_DB is deprecated and will stop being read in a coming release: "
        "set FORGELINE_CONVERTER_DATABASE_URL instead (FORGELINE_CONVERTER_DATABASE_URL="
        "sqlite:////var/lib/forgeline/converter/state.db is the same setting)"
    ]


def test_database_url_wins_when_both_name_the_same_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGELINE_CONVERTER_STATE_DB", "state/conversions.db")
    monkeypatch.setenv("FORGELINE_CONVERTER_DATABASE_URL", "sqlite:///state/conversions.db")

    assert load_settings(ConverterSettings).database_path == Path("state/conversions.db")


def test_both_variables_naming_different_files_stop_it_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGELINE_CONVERTER_STATE_DB", "/old/state.db")
    monkeypatch.setenv("FORGELINE_CONVERTER_DATABASE_URL", "sqlite:////new/state.db")

    with pytest.raises(SettingsError) as refused:
        load_settings(ConverterSettings)
    (problem,) = refused.value.problems
    assert problem.startswith("FORGELINE_CONVERTER_STATE_DB (deprecated) and ")


def test_a_postgresql_database_is_accepted_and_others_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGELINE_CONVERTER_DATABASE_URL", "postgresql://db/forgeline")
    assert load_settings(ConverterSettings).database_url == "postgresql://db/forgeline"

    monkeypatch.setenv("FORGELINE_CONVERTER_DATABASE_URL", "mysql://db/forgeline")
    with pytest.raises(SettingsError) as refused:
        load_settings(ConverterSettings)
    assert refused.value.problems == [
        "FORGELINE_CONVERTER_DATABASE_URL='mysql://db/forgeline' is refused: mysql:// is not "
        "supported: expected sqlite:///relative/path or sqlite:////absolute/path "
        "(or postgresql://USER:PASSWORD@HOST/DATABASE)"
    ]
