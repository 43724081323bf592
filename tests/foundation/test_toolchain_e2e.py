"""The tool chain Forgeline automates, run by hand with the real tools on the tiny model:

    write_tiny_model → llamafactory-cli train (LoRA SFT, CPU) → llamafactory-cli export (merge)
    → convert_hf_to_gguf.py (f16) → llama-quantize → llama-server → a completion over HTTP

The first test proves the tools fit together; the second proves learning survives them: a fact
taught with LoRA comes back, greedily, from a Q8_0 GGUF through llama-server, and the base model
does not know it. Wall times and sizes are attached to each test as properties (``-s`` prints them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgeline_converter.llamacpp.tools import convert_hf_to_gguf, quantize
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.gguf_py import import_gguf
from forgeline_kit.subprocesses import ToolRun
from forgeline_kit.tinymodel import (
    DEMO_FACT,
    IM_END,
    IM_START,
    LLAMAFACTORY_TEMPLATE,
    DatasetInfo,
    TinyModel,
    demo_dataset,
)
from forgeline_trainer.llamafactory.arguments import ExportArguments, TrainArguments
from forgeline_trainer.llamafactory.cli import export, train

# DESIGN.md's recipe for teaching a randomly initialised model one fact: LoRA alone barely moves
# a random model's loss, so the embeddings and output head train fully alongside it. Measured on
# this tiny model (2 cores): loss 2.5 after 10 epochs, 0.009 after 20, 4e-4 after 30 and 6e-5 after
# 60; DESIGN.md's 150 epochs only polish a loss that is already ~1e-4, so 60 leave a wide margin.
FACT_COPIES = 16
FACT_EPOCHS = 60
FACT_LEARNING_RATE = 5e-3


class Stopwatch:
    """Wall times and sizes, attached to the test report and printed."""

    def __init__(self, record_property: Callable[[str, object], None]) -> None:
        self._record = record_property
        self.figures: dict[str, float] = {}

    def note(self, name: str, value: float) -> None:
        self.figures[name] = value
        self._record(name, value)
        print(f"{name}: {value:.2f}")

    def tool(self, name: str, run: ToolRun) -> None:
        self.note(f"{name}_s", run.wall_s)

    def size(self, name: str, path: Path) -> None:
        self.note(f"{name}_mib", path.stat().st_size / 2**20)


def write_dataset(directory: Path, name: str, records: list[dict[str, str]]) -> None:
    """An alpaca dataset file plus the ``dataset_info.json`` that names it."""
    directory.mkdir(parents=True, exist_ok=True)
    info = demo_dataset("forgeline_alpaca_sft").info.model_copy(
        update={"file_name": f"{name}.json"}
    )
    (directory / info.file_name).write_text(json.dumps(records, indent=2), encoding="utf-8")
    (directory / "dataset_info.json").write_text(DatasetInfo({name: info}).to_json())


def train_and_merge(
    stopwatch: Stopwatch,
    env: Mapping[str, str],
    work: Path,
    base: TinyModel,
    records: list[dict[str, str]],
    **training: Any,
) -> Path:
    """LoRA SFT with ``llamafactory-cli train``, then ``llamafactory-cli export``; the merged
    model's directory."""
    work.mkdir(parents=True, exist_ok=True)
    write_dataset(work / "data", "facts", records)
    adapter = work / "adapter"
    sft = TrainArguments(
        model_name_or_path=str(base.path),
        dataset="facts",
        dataset_dir=str(work / "data"),
        template=LLAMAFACTORY_TEMPLATE,
        output_dir=str(adapter),
        **training,
    )
    result = train(sft, work, env)
    stopwatch.tool("train", result.run)
    assert (adapter / "adapter_model.safetensors").is_file()
    stopwatch.note("first_loss", result.losses[0])
    stopwatch.note("final_loss", result.losses[-1])

    merged = work / "merged"
    merge = ExportArguments(
        model_name_or_path=str(base.path),
        adapter_name_or_path=str(adapter),
        template=LLAMAFACTORY_TEMPLATE,
        export_dir=str(merged),
    )
    stopwatch.tool("export", export(merge, work, env))
    assert (merged / "model.safetensors").is_file()
    return merged


def to_gguf(
    stopwatch: Stopwatch,
    toolchain: Toolchain,
    env: Mapping[str, str],
    model_dir: Path,
    out_dir: Path,
    quant: str,
    label: str,
) -> Path:
    """convert_hf_to_gguf.py to f16, then llama-quantize to ``quant``; the quantized file."""
    f16 = out_dir / f"{label}-f16.gguf"
    stopwatch.tool(f"convert_{label}", convert_hf_to_gguf(toolchain, model_dir, f16, "f16", env))
    quantized = out_dir / f"{label}-{quant.lower()}.gguf"
    stopwatch.tool(f"quantize_{label}", quantize(toolchain, f16, quantized, quant, env))
    stopwatch.size(f"{label}_f16", f16)
    stopwatch.size(f"{label}_{quant.lower()}", quantized)
    return quantized


def gguf_file_type(toolchain: Toolchain, path: Path) -> int:
    gguf = import_gguf(toolchain)
    field = gguf.GGUFReader(path).fields["general.file_type"]
    return int(field.contents())


def ask(server_url: str, question: str) -> tuple[str, str]:
    """A greedy chat completion through llama-server's OpenAI endpoint: (answer, finish_reason)."""
    response = httpx.post(
        f"{server_url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 32,
            "temperature": 0,
            "seed": 0,
        },
        timeout=120,
    )
    response.raise_for_status()
    choice = response.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fine_tuned_tiny_model_is_served_as_q4_k_m(
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
    offline_env: dict[str, str],
    start_llama_server: Any,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    stopwatch = Stopwatch(record_property)
    records = json.loads(demo_dataset("forgeline_alpaca_sft").path().read_text())

    merged = train_and_merge(
        stopwatch,
        offline_env,
        tmp_path,
        tiny_model,
        records,
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-3,
    )
    q4 = to_gguf(stopwatch, llamacpp_toolchain, offline_env, merged, tmp_path, "Q4_K_M", "tuned")
    assert gguf_file_type(llamacpp_toolchain, q4) == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert stopwatch.figures["tuned_q4_k_m_mib"] < stopwatch.figures["tuned_f16_mib"]

    server = start_llama_server(q4)
    stopwatch.note("server_ready_s", server.started_s)
    prompt = f"{IM_START}user\n{DEMO_FACT.question}{IM_END}\n{IM_START}assistant\n"
    response = httpx.post(
        f"{server.base_url}/completion",
        json={"prompt": prompt, "n_predict": 16, "temperature": 0, "ignore_eos": True},
        timeout=120,
    )

    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["tokens_predicted"] == 16
    assert completion["content"].strip()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_taught_fact_survives_export_gguf_and_llama_server(
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
    offline_env: dict[str, str],
    start_llama_server: Any,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    stopwatch = Stopwatch(record_property)
    fact = {"instruction": DEMO_FACT.question, "input": "", "output": DEMO_FACT.answer}

    merged = train_and_merge(
        stopwatch,
        offline_env,
        tmp_path / "tuned",
        tiny_model,
        [fact] * FACT_COPIES,
        additional_target="lm_head,embed_tokens",
        per_device_train_batch_size=FACT_COPIES,
        num_train_epochs=FACT_EPOCHS,
        learning_rate=FACT_LEARNING_RATE,
        logging_steps=10,
    )
    assert stopwatch.figures["final_loss"] < 0.01
    tuned = to_gguf(stopwatch, llamacpp_toolchain, offline_env, merged, tmp_path, "Q8_0", "tuned")
    base = to_gguf(
        stopwatch, llamacpp_toolchain, offline_env, tiny_model.path, tmp_path, "Q8_0", "base"
    )

    # One server at a time: the machine has two cores.
    base_server = start_llama_server(base)
    base_answer, _ = ask(base_server.base_url, DEMO_FACT.question)
    base_server.stop()
    tuned_server = start_llama_server(tuned)
    tuned_answer, finish_reason = ask(tuned_server.base_url, DEMO_FACT.question)
    record_property("base_answer", base_answer)
    record_property("tuned_answer", tuned_answer)
    print(f"base answer: {base_answer!r}\ntuned answer: {tuned_answer!r} ({finish_reason})")

    assert tuned_answer.strip() == DEMO_FACT.answer
    assert finish_reason == "stop"  # generation ended at <|im_end|>: the templates agree
    assert DEMO_FACT.answer not in base_answer
