"""A PEFT LoRA adapter converted to a GGUF adapter: llama-server applies it on top of the base
GGUF and generates exactly what the merged model generates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline_converter.adapter import convert_adapter
from forgeline_converter.core import ConversionPlan, ConversionResult, convert_model
from forgeline_converter.errors import ConversionError
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import LlamaServerOptions, start_llama_server
from forgeline_kit.tinymodel import TinyModel

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
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


def greedy(toolchain: Toolchain, log: Path, model: Path, adapters: tuple[Path, ...] = ()) -> str:
    options = LlamaServerOptions(model=model, lora_adapters=adapters)
    server = start_llama_server(options, log, toolchain=toolchain)
    try:
        response = httpx.post(
            f"{server.base_url}/completion",
            json={"prompt": PROMPT, "n_predict": 12, "temperature": 0, "ignore_eos": True},
            timeout=60,
        )
        response.raise_for_status()
        content: str = response.json()["content"]
        return content
    finally:
        server.stop()


def test_gguf_adapter_on_base_generates_like_the_merged_model(
    adapter_and_merged: tuple[Path, Path],
    tiny_model: TinyModel,
    quantized: ConversionResult,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, Any],
    tmp_path: Path,
) -> None:
    adapter_dir, merged_dir = adapter_and_merged
    adapter = convert_adapter(
        adapter_dir, tiny_model.path, tmp_path / "out", llamacpp_toolchain, tool_env
    )
    assert adapter.info.gguf_type == "adapter"
    assert adapter.info.architecture == "llama"
    assert adapter.info.tensor_count == 2 * 2 * 7  # A and B for 7 modules in 2 layers
    merged = convert_model(
        merged_dir, tmp_path / "merged", ConversionPlan(), llamacpp_toolchain, tool_env
    ).files[0]
    base_f16 = quantized.files[0].path

    base_text = greedy(llamacpp_toolchain, tmp_path / "base.log", base_f16)
    adapted_text = greedy(llamacpp_toolchain, tmp_path / "lora.log", base_f16, (adapter.path,))
    merged_text = greedy(llamacpp_toolchain, tmp_path / "merged.log", merged.path)

    assert adapted_text == merged_text
    assert adapted_text != base_text


def test_a_non_lora_adapter_is_refused(
    tiny_model: TinyModel, llamacpp_toolchain: Toolchain, tool_env: dict[str, Any], tmp_path: Path
) -> None:
    adapter = tmp_path / "ia3"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ConversionError, match="only LoRA"):
        convert_adapter(adapter, tiny_model.path, tmp_path / "out", llamacpp_toolchain, tool_env)
    assert not (tmp_path / "out").exists()
