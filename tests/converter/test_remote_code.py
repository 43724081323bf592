"""A model that needs its own Python code is converted only when the operator trusts remote code
(``FORGELINE_CONVERTER_TRUST_REMOTE_CODE``); otherwise it is refused before any tool runs, and the
convert scripts' environment keeps transformers from importing model code at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forgeline_converter.errors import RemoteCodeNotTrusted
from forgeline_converter.gguf_conversion import ConversionPlan, convert_model
from forgeline_converter.llamacpp.adapter import convert_adapter
from forgeline_converter.llamacpp.source import TRUST_REMOTE_CODE_SETTING
from forgeline_converter.llamacpp.tools import NO_MODULES_CACHE, convert_env
from forgeline_converter.registry_access import RegistryArtifact, RegistryVersion, VersionKind
from forgeline_converter.settings import ConverterSettings
from forgeline_converter.validation import check_remote_code
from forgeline_converter.worker_process import EXIT_FAILED, ModelJob, WorkerJob, WorkerMessage, main
from forgeline_kit.errors import FailedPrecondition
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel

from .conftest import ModelCopy

# Code a model could ship: importing it leaves a marker file, so a test sees whether it ran.
CONFIG_CODE = """
import pathlib
pathlib.Path("{marker}").write_text("imported")
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote"
"""


def with_code(
    model_copy: ModelCopy, marker: Path, *, auto_map: bool = True, code: bool = True
) -> Path:
    """The tiny model plus what a remote-code repository has: an auto_map in config.json naming
    a configuration class in a ``.py`` file beside it (the tiny Llama does not need it)."""
    config = {"auto_map": {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig"}}
    source = model_copy(config=config if auto_map else None)
    if code:
        text = CONFIG_CODE.format(marker=marker)
        (source / "configuration_tiny_remote.py").write_text(text, encoding="utf-8")
    return source


def test_the_setting_is_off_by_default_and_named_in_refusals() -> None:
    assert ConverterSettings.env_var("trust_remote_code") == TRUST_REMOTE_CODE_SETTING
    assert ConverterSettings().trust_remote_code is False


@pytest.mark.parametrize(
    ("auto_map", "code", "reason"),
    [
        (True, True, "config.json has an auto_map"),
        (True, False, "config.json has an auto_map"),
        (False, True, "configuration_tiny_remote.py"),
    ],
)
def test_refused_before_any_tool_runs(
    auto_map: bool,
    code: bool,
    reason: str,
    model_copy: ModelCopy,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "imported"
    source = with_code(model_copy, marker, auto_map=auto_map, code=code)
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(RemoteCodeNotTrusted) as caught:
        convert_model(
            source, work / "out", ConversionPlan(), llamacpp_toolchain, tool_env, work_root=work
        )
    error = caught.value
    assert error.reason == "remote_code_not_trusted"
    assert f"{TRUST_REMOTE_CODE_SETTING}=true" in error.message
    assert reason in error.message
    assert str(tmp_path) not in error.message, "the message names a host path"
    assert list(work.iterdir()) == [], "a refused conversion left files behind"
    assert not marker.exists()


def test_a_tokenizer_auto_map_is_refused_too(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    source = model_copy(
        tokenizer_config={"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}
    )
    with pytest.raises(RemoteCodeNotTrusted, match=r"tokenizer_config\.json has an auto_map"):
        convert_model(source, tmp_path / "out", ConversionPlan(), llamacpp_toolchain, tool_env)


def test_allowed_when_the_operator_trusts_remote_code(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    source = with_code(model_copy, tmp_path / "imported")
    result = convert_model(
        source, tmp_path / "out", ConversionPlan(), llamacpp_toolchain, tool_env,
        work_root=tmp_path / "w", trust_remote_code=True,
    )  # fmt: skip
    assert result.architecture == "llama"
    assert [f.path.parent for f in result.files] == [tmp_path / "out"]


def test_an_adapter_carrying_code_is_refused(
    tiny_model: TinyModel, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    # Refused before its weights are read, so a stand-in adapter will do.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "modeling_lora.py").write_text("raise SystemExit('imported')\n", encoding="utf-8")
    with pytest.raises(RemoteCodeNotTrusted, match="the adapter needs its own Python code"):
        convert_adapter(adapter, tiny_model.path, tmp_path / "out", llamacpp_toolchain, tool_env)
    assert not (tmp_path / "out").exists()


def test_the_worker_reports_the_refusal(
    model_copy: ModelCopy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service's setting reaches the worker in its job file; refused there, the conversion
    fails with the reason code and the message naming the setting."""
    source = with_code(model_copy, tmp_path / "imported")
    job = WorkerJob(
        task=ModelJob(source_dir=source, plan=ConversionPlan(), register_outtype=True),
        output_dir=tmp_path / "outputs",
        work_root=tmp_path / "w",
        result_file=tmp_path / "result.json",
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json(), encoding="utf-8")
    assert main([str(job_file)]) == EXIT_FAILED
    lines = [WorkerMessage.model_validate_json(x) for x in capsys.readouterr().out.splitlines()]
    errors = [m for m in lines if m.type == "error"]
    assert [m.code for m in errors] == ["remote_code_not_trusted"]
    assert TRUST_REMOTE_CODE_SETTING in errors[0].text
    assert not job.result_file.exists()


# What transformers does with trust_remote_code=True, as several of llama.cpp's model classes
# call it (AutoTokenizer.from_pretrained(dir_model, trust_remote_code=True)).
LOAD_WITH_REMOTE_CODE = (
    "import sys\n"
    "from transformers import AutoConfig\n"
    "try:\n"
    "    config = AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
    "except Exception as error:\n"
    "    print(f'refused: {type(error).__name__}: {error}')\n"
    "else:\n"
    "    print(f'loaded: {type(config).__name__}')\n"
)


def test_the_convert_environment_keeps_model_code_out(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    """Even if the check before the tool were bypassed, the convert scripts' environment makes
    transformers fail before it imports a model's code; trusted, the code loads from a modules
    cache inside the conversion's own directory."""
    marker = tmp_path / "imported"
    source = with_code(model_copy, marker)
    config = json.loads((source / "config.json").read_text())
    # A model type transformers does not know, so only the model's own class can load it.
    (source / "config.json").write_text(json.dumps({**config, "model_type": "tiny_remote"}))
    modules = tmp_path / "modules"

    def load(trust: bool) -> str:
        env = convert_env(llamacpp_toolchain, tool_env, modules, trust_remote_code=trust)
        assert env["HF_HUB_OFFLINE"] == "1"
        completed = subprocess.run(  # noqa: S603 - an argument list
            [sys.executable, "-c", LOAD_WITH_REMOTE_CODE, str(source)],
            env=env, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return completed.stdout.strip()

    refused = load(False)
    assert refused.startswith("refused:"), refused
    assert not marker.exists(), "the model's code ran without trust_remote_code"
    assert not modules.exists()
    assert (
        convert_env(llamacpp_toolchain, tool_env, modules, trust_remote_code=False)[
            "HF_MODULES_CACHE"
        ]
        == NO_MODULES_CACHE
    )
    assert load(True) == "loaded: TinyRemoteConfig"
    assert marker.exists()
    assert any(modules.rglob("configuration_tiny_remote.py"))


def registry_version(labels: dict[str, str], paths: list[str]) -> RegistryVersion:
    return RegistryVersion(
        model="acme/remote",
        number=3,
        kind=VersionKind.BASE,
        labels=labels,
        artifacts=tuple(RegistryArtifact(path=p) for p in paths),
    )


@pytest.mark.parametrize(
    ("labels", "paths", "reason"),
    [
        ({"trust_remote_code": "true"}, ["config.json"], "imported with --trust-remote-code"),
        ({}, ["config.json", "modeling_remote.py"], "modeling_remote.py"),
    ],
)
def test_refused_at_submission_from_what_the_registry_records(
    labels: dict[str, str], paths: list[str], reason: str
) -> None:
    version = registry_version(labels, paths)
    with pytest.raises(FailedPrecondition) as caught:
        check_remote_code(version, "spec.model.source", trust_remote_code=False)
    assert caught.value.field == "spec.model.source"
    assert reason in caught.value.message
    assert f"{TRUST_REMOTE_CODE_SETTING}=true" in caught.value.message
    check_remote_code(version, "spec.model.source", trust_remote_code=True)
    check_remote_code(registry_version({}, ["config.json"]), "spec.model.source", False)
