"""Converter fixtures: copies of the tiny model altered the ways real inputs go wrong, and one
shared conversion of the tiny model to several quantization types."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import pytest

from forgeline_converter.gguf_conversion import ConversionPlan, ConversionResult, convert_model
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel

QUANTIZATIONS = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")

ModelCopy = Callable[..., Path]


@pytest.fixture(scope="session")
def pretrain_text() -> Path:
    """The held-out text for perplexity: the tiny model's pre-training demo text."""
    return Path(str(files("forgeline_kit.tinymodel.data").joinpath("pretrain.txt")))


@pytest.fixture(scope="session")
def tool_env() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture
def model_copy(tiny_model: TinyModel, tmp_path: Path) -> ModelCopy:
    """A copy of the tiny model, without ``drop`` files and with ``tokenizer_config`` /
    ``config`` keys replaced (a value of None removes the key)."""

    def make(
        name: str = "model",
        drop: tuple[str, ...] = (),
        tokenizer_config: dict[str, object] | None = None,
        config: dict[str, object] | None = None,
    ) -> Path:
        target = tmp_path / name
        shutil.copytree(tiny_model.path, target)
        for file_name in drop:
            (target / file_name).unlink()
        for file_name, changes in (
            ("tokenizer_config.json", tokenizer_config),
            ("config.json", config),
        ):
            if changes:
                data = json.loads((target / file_name).read_text())
                for key, value in changes.items():
                    if value is None:
                        data.pop(key, None)
                    else:
                        data[key] = value
                (target / file_name).write_text(json.dumps(data))
        return target

    return make


@pytest.fixture(scope="session")
def quantized(
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    pretrain_text: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> ConversionResult:
    """The tiny model converted once to f16 and quantized from it to every QUANTIZATIONS type,
    each with its perplexity on the pre-training text."""
    work = tmp_path_factory.mktemp("quantized")
    plan = ConversionPlan(outtype="f16", quantizations=QUANTIZATIONS, evaluation_text=pretrain_text)
    return convert_model(
        tiny_model.path, work / "out", plan, llamacpp_toolchain, tool_env, work_root=work
    )


@pytest.fixture(scope="session")
def adapter_and_merged(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A LoRA adapter with random (not zero) B matrices, so it changes the model without
    training, and the same adapter merged into the base with PEFT."""
    import torch  # imported here: only this fixture needs torch in the test process
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    work = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    peft_model.save_pretrained(str(work / "adapter"))
    merged = work / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy2(tiny_model.path / name, merged / name)
    return work / "adapter", merged
