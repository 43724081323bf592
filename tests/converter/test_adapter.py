"""A PEFT LoRA adapter converted to a GGUF adapter: llama-server applies it on top of the base
GGUF and generates exactly what the merged model generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline_converter.errors import ConversionError
from forgeline_converter.gguf_conversion import ConversionPlan, ConversionResult, convert_model
from forgeline_converter.llamacpp.adapter import convert_adapter
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import LlamaServerOptions, start_llama_server
from forgeline_kit.tinymodel import TinyModel

PROMPT = "The capital of France is"


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
