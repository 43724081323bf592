"""A LoRA-only fine-tune of the tiny model on the demo fact, converted to a GGUF adapter, gives the
trained answer when llama-server applies it on top of the base GGUF; the base alone does not.

Everything is real: the demo's own training file, ``llamafactory-cli train`` through the trainer's
wrapper, ``convert_lora_to_gguf.py`` through the converter, ``llama-server --lora`` answering a
greedy chat completion.

Why LoRA alone is enough: with ``lora_target: all`` the 14 low-rank updates of the two layers learn
the answer's token-to-next-token lookup in 16 steps. The loss stays high (7.0 to 3.0 here, 2.6 at
best after 60 steps) because the random output head (rows of norm 0.32) and the frozen final norm
(hidden states of norm 16) cap any logit near 5, so no token can be very likely; greedy decoding
needs only the right token to be the most likely, which it is by about 3 logits at every answer
position. (The demo trains ``embed_tokens``/``lm_head`` in full as well; a GGUF adapter cannot
carry those, and this shows it does not need them.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from forgeline_cli.walkthrough import write_fact_dataset
from forgeline_converter.gguf_conversion import ConversionResult
from forgeline_converter.llamacpp.adapter import ConvertedAdapter, convert_adapter
from forgeline_kit.datasets import (
    DatasetFormat,
    DatasetSpec,
    prepare_for_llamafactory,
    validate_dataset,
    write_dataset_info,
)
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import LlamaServerProcess
from forgeline_kit.tinymodel import DEMO_FACT, LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_trainer.llamafactory.arguments import TrainArguments
from forgeline_trainer.llamafactory.cli import TrainResult, train

#: The measured recipe: one example per step, 16 steps, lr 5e-3 with a cosine decay, rank 16 on
#: every linear module. 1e-2 diverges; 3e-3 still learns it with a smaller margin.
STEPS = 16
LEARNING_RATE = 5e-3
LORA_RANK = 16
LORA_ALPHA = 32

#: The `start_llama_server` fixture of tests/conftest.py.
StartLlamaServer = Callable[..., LlamaServerProcess]


@dataclass(frozen=True)
class FactAdapter:
    training: TrainResult
    gguf: ConvertedAdapter


@pytest.fixture(scope="module")
def fact_adapter(
    tiny_model: TinyModel,
    offline_env: dict[str, str],
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> FactAdapter:
    """The tiny model fine-tuned on the demo fact with LoRA alone (no ``additional_target``),
    and its adapter converted to a GGUF adapter (f16, as the pipeline converts it)."""
    work = tmp_path_factory.mktemp("fact-adapter")
    raw = DatasetSpec(
        name="fact",
        path=write_fact_dataset(work / "fact.jsonl"),
        format=DatasetFormat.OPENAI_CHAT,
    )
    validate_dataset(raw)
    info = write_dataset_info(work / "data", [prepare_for_llamafactory(raw, work / "prepared")])
    arguments = TrainArguments(
        model_name_or_path=str(tiny_model.path),
        finetuning_type="lora",
        lora_target="all",
        lora_rank=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        dataset="fact",
        dataset_dir=str(info.parent),
        template=LLAMAFACTORY_TEMPLATE,
        output_dir=str(work / "adapter"),
        per_device_train_batch_size=1,
        max_steps=STEPS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        logging_steps=STEPS // 4,
    )
    training = train(arguments, work, offline_env)
    gguf = convert_adapter(
        training.output_dir, tiny_model.path, work / "gguf", llamacpp_toolchain, tool_env
    )
    return FactAdapter(training=training, gguf=gguf)


def _gguf(quantized: ConversionResult, quantization: str) -> Path:
    return next(file.path for file in quantized.files if file.quantization == quantization)


def _greedy_answer(start_llama_server: StartLlamaServer, model: Path, *adapters: Path) -> str:
    """The answer to the demo question through llama-server's chat API, greedily decoded."""
    lora_args = [arg for adapter in adapters for arg in ("--lora", str(adapter))]
    server = start_llama_server(model, lora_args)
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": DEMO_FACT.question}],
            "temperature": 0,
            "max_tokens": 32,
        },
        timeout=60,
    )
    response.raise_for_status()
    content: str = response.json()["choices"][0]["message"]["content"]
    return content.strip()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("base_type", ["f16", "Q8_0"])
def test_base_gguf_with_the_lora_gguf_gives_the_trained_answer(
    fact_adapter: FactAdapter,
    quantized: ConversionResult,
    start_llama_server: StartLlamaServer,
    base_type: str,
) -> None:
    assert fact_adapter.gguf.info.gguf_type == "adapter"
    # Low-rank tensors only: A and B of the 7 linear modules in each of the 2 layers.
    assert fact_adapter.gguf.info.tensor_count == 2 * 7 * 2
    answer = _greedy_answer(start_llama_server, _gguf(quantized, base_type), fact_adapter.gguf.path)
    assert answer == DEMO_FACT.answer


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_base_gguf_alone_does_not_know_the_answer(
    fact_adapter: FactAdapter, quantized: ConversionResult, start_llama_server: StartLlamaServer
) -> None:
    losses = fact_adapter.training.losses
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    answer = _greedy_answer(start_llama_server, _gguf(quantized, "f16"))
    assert DEMO_FACT.answer not in answer
    assert "Copperfinch" not in answer
