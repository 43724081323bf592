"""The CLI through a running registry process: push the tiny model, pull it back and load it
with transformers; list, show and alias; errors as messages and exit codes; ``--json``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from forgeline_cli.registry_commands import register_registry_commands

from .helpers import same_tree, write_model_dir
from .process import RegistryProcess

if TYPE_CHECKING:
    from forgeline_kit.tinymodel import TinyModel


@pytest.fixture(scope="module")
def registry_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cli-registry")
    process = RegistryProcess(
        {"FORGELINE_REGISTRY_STORAGE": "fs", "FORGELINE_REGISTRY_FS_ROOT": str(root)}
    ).wait_serving()
    yield process.target
    process.stop()


class Cli:
    """Runs ``forgeline`` registry commands in this process, as the console script would."""

    def __init__(self, address: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.address = address
        self.capsys = capsys
        self.parser = argparse.ArgumentParser(prog="forgeline")
        register_registry_commands(self.parser.add_subparsers(dest="command", required=True))

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        args = self.parser.parse_args([*argv, "--registry", self.address])
        code: int = args.run(args)
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def forgeline(registry_address: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(registry_address, capsys)


def test_the_tiny_model_round_trips_through_the_cli_and_loads_in_transformers(
    forgeline: Cli, tiny_model: TinyModel, tmp_path: Path
) -> None:
    pushed = forgeline.json("push", str(tiny_model.path), "--model", "tiny-llama")
    assert (pushed["model"], pushed["number"], pushed["kind"]) == (
        "tiny-llama",
        1,
        "VERSION_KIND_BASE",
    )
    assert {a["path"]: a["sha256"] for a in pushed["artifacts"]} == tiny_model.files
    out = tmp_path / "pulled"
    pulled = forgeline.json("pull", "tiny-llama@latest", str(out))
    assert pulled["number"] == 1
    assert same_tree(tiny_model.path, out)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Hello, registry!", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(original(ids).logits, loaded(ids).logits)


def test_list_show_alias_and_errors(forgeline: Cli, registry_address: str, tmp_path: Path) -> None:
    for seed in (1, 2):
        code, out, _ = forgeline(
            "push",
            str(write_model_dir(tmp_path / str(seed), seed)),
            "--model",
            "acme/small",
            "--label",
            f"seed={seed}",
        )
        assert code == 0
        assert out.startswith(f"pushed acme/small:{seed}  base  3 files")

    alias = forgeline.json("alias", "set", "acme/small", "production", "1", "--expected", "0")
    assert alias["version"] == 1
    code, _, err = forgeline("alias", "set", "acme/small", "production", "2", "--expected", "2")
    assert code == 1
    assert "points at version 1, not 2" in err
    assert forgeline.json("alias", "list", "acme/small") == {"latest": 2, "production": 1}

    listed = forgeline.json("models", "list", "--prefix", "acme/")
    assert [(m["name"], m["versionCount"]) for m in listed] == [("acme/small", 2)]
    # A file uploaded through the gateway's Files API is kept as a model; not listed unless asked.
    code, _, err = forgeline("push", str(tmp_path / "1"), "--model", "files/file-abc")
    assert code == 0, err
    code, out, _ = forgeline("models", "list")
    assert code == 0
    assert "files/file-abc" not in out
    assert out.splitlines()[-1] == "(1 uploaded file of the Files API not listed: --all lists them)"
    assert "files/file-abc" in forgeline("models", "list", "--all")[1]
    assert [m["name"] for m in forgeline.json("models", "list", "--prefix", "files/")] == [
        "files/file-abc"
    ]
    shown = forgeline.json("models", "show", "acme/small")
    assert [v["number"] for v in shown["versions"]] == [2, 1]
    assert shown["versions"][1]["labels"] == {"seed": "1"}
    code, out, _ = forgeline("models", "show", "acme/small")
    assert code == 0
    assert "acme/small:1  base  3 files" in out
    assert "[production]" in out

    code, out, _ = forgeline("pull", "acme/small@production", str(tmp_path / "prod"))
    assert code == 0
    assert out.startswith("pulled acme/small:1")
    assert same_tree(tmp_path / "1", tmp_path / "prod")

    code, _, err = forgeline("pull", "nope:3", str(tmp_path / "x"))
    assert (code, err.strip()) == (1, "forgeline: model 'nope' not found")
    code, _, err = forgeline("push", str(tmp_path / "missing"), "--model", "acme/small")
    assert code == 1
    assert "is not a directory" in err
    code, _, err = forgeline("push", str(tmp_path / "1"), "--model", "../escape")
    assert code == 1
    assert "not a valid model name" in err
    forgeline.address = "127.0.0.1:1"
    code, _, err = forgeline("models", "list")
    assert code == 1
    assert err.startswith("forgeline: cannot reach the registry at 127.0.0.1:1: is it running?")
    forgeline.address = registry_address
    code, _, _ = forgeline("alias", "delete", "acme/small", "production")
    assert code == 0
    assert forgeline.json("alias", "list", "acme/small") == {"latest": 2}
