"""A LoRA adapter whose rank-space activations leave F16's range still serves correctly from a
GGUF adapter converted with ``outtype f32``.

llama.cpp applies an adapter as ``B @ (A @ x)`` at run time, and on the CPU it converts a matrix
product's input to the weight's type: with F16 A and B tensors, an ``A @ x`` above 65504 becomes
infinite and the logits NaN (the server then emits token 0x18 over and over). A strongly trained
LoRA gets there: the demo fact at lr 2e-2, alpha/rank 4, 60 steps reached |A @ x| = 2.8e5 in
``down_proj``, and its F16 adapter gave that garbage on F16 and Q8_0 bases, while the same adapter
in F32 generated exactly what PEFT did. Merged weights do not have the problem: ``A @ x`` is never
materialised. The adapter here is built in that regime directly (large A, small B), which takes no
training.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline_converter.gguf_conversion import ConversionPlan, ConversionResult, convert_model
from forgeline_converter.llamacpp.adapter import convert_adapter
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import LlamaServerProcess
from forgeline_kit.tinymodel import TinyModel

#: The `start_llama_server` fixture of tests/conftest.py.
StartLlamaServer = Callable[..., LlamaServerProcess]

F16_MAX = 65504.0
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def wide_adapter(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, float]:
    """A LoRA adapter on q/v projections with A ~ N(0, 2e4) and B ~ N(0, 2e-6) (so B @ A is of
    the base weights' size), the same adapter merged with PEFT, and the largest |A @ x| PEFT saw
    on a short prompt."""
    import torch  # imported here: only this fixture needs torch in the test process
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    work = tmp_path_factory.mktemp("wide-lora")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    config = LoraConfig(
        r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model: Any = get_peft_model(model, config)
    largest = 0.0

    def record(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal largest
        largest = max(largest, float(output.abs().max()))

    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_A" in name:
                parameter.normal_(0, 2e4)
            elif "lora_B" in name:
                parameter.normal_(0, 2e-6)
        for name, module in peft_model.named_modules():
            if name.endswith("lora_A.default"):
                module.register_forward_hook(record)
        peft_model(torch.tensor([[4, 100, 200, 300]]))
    peft_model.save_pretrained(str(work / "adapter"))
    merged = work / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy2(tiny_model.path / name, merged / name)
    return work / "adapter", merged, largest


def _greedy(start_llama_server: StartLlamaServer, model: Path, *adapters: Path) -> str:
    lora_args = [arg for adapter in adapters for arg in ("--lora", str(adapter))]
    server = start_llama_server(model, lora_args)
    response = httpx.post(
        f"{server.base_url}/completion",
        json={"prompt": PROMPT, "n_predict": 12, "temperature": 0, "ignore_eos": True},
        timeout=60,
    )
    response.raise_for_status()
    content: str = response.json()["content"]
    return content


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_f32_gguf_adapter_beyond_f16_range_generates_like_the_merged_model(
    wide_adapter: tuple[Path, Path, float],
    tiny_model: TinyModel,
    quantized: ConversionResult,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    start_llama_server: StartLlamaServer,
    tmp_path: Path,
) -> None:
    adapter_dir, merged_dir, largest = wide_adapter
    assert largest > 4 * F16_MAX  # the regime where an F16 adapter overflows
    adapter = convert_adapter(
        adapter_dir, tiny_model.path, tmp_path / "out", llamacpp_toolchain, tool_env, outtype="f32"
    )
    merged = convert_model(
        merged_dir, tmp_path / "merged", ConversionPlan(), llamacpp_toolchain, tool_env
    ).files[0]
    base_f16 = next(file.path for file in quantized.files if file.quantization == "f16")

    adapted_text = _greedy(start_llama_server, base_f16, adapter.path)
    merged_text = _greedy(start_llama_server, merged.path)

    assert adapted_text == merged_text
    assert adapted_text != _greedy(start_llama_server, base_f16)
