"""Small LoRA fine-tunes of the tiny model without training, as GGUF adapters (and, when asked,
their merged GGUFs): for the gateway's adapter deployments, their tests and the benchmark; and
`hf_to_gguf`, the GGUF of an HF model that tests and benchmarks serve.

Each adapter has random (not zero) B matrices on every linear module, so it changes what the
model answers; different seeds give adapters that answer differently from each other. They are
converted with the pinned llama.cpp's ``convert_lora_to_gguf.py`` (through the converter's
`convert_adapter`, F32 as the pipeline converts them), the merged model with
``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.gguf_py import subprocess_env

__all__ = ["GgufAdapter", "hf_to_gguf", "make_gguf_adapter"]

#: Every linear module of the tiny Llama model.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONVERT_TIMEOUT_S = 300


@dataclass(frozen=True)
class GgufAdapter:
    """A GGUF adapter of the tiny model, the HF/PEFT adapter it was converted from (what vLLM
    loads), and its merged GGUF when one was made."""

    seed: int
    gguf: Path
    merged_gguf: Path | None = None
    hf: Path | None = None


def make_gguf_adapter(
    model_dir: Path,
    work: Path,
    toolchain: Toolchain,
    *,
    seed: int,
    merged: bool = False,
    merged_outtype: str = "f16",
    std: float = 0.2,
) -> GgufAdapter:
    """A LoRA adapter of the HF model in `model_dir` with random B matrices (normal, `std`),
    saved in PEFT's layout (`GgufAdapter.hf`) and converted to a GGUF adapter under `work`;
    with `merged`, the same adapter merged into the model and converted to a GGUF of
    `merged_outtype` too."""
    # Imported here: only building adapters needs torch and the converter in the test process
    # (the session's conftest imports this module for `hf_to_gguf`).
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgeline_converter.llamacpp.adapter import convert_adapter

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, std)
    adapter_dir = work / f"adapter-{seed}"
    peft_model.save_pretrained(str(adapter_dir))
    env = subprocess_env(toolchain)
    converted = convert_adapter(
        adapter_dir, model_dir, work / f"gguf-{seed}", toolchain, env, outtype="f32"
    )
    merged_gguf: Path | None = None
    if merged:
        merged_dir = work / f"merged-{seed}"
        peft_model.merge_and_unload().save_pretrained(merged_dir)
        for name in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy2(model_dir / name, merged_dir / name)
        merged_gguf = hf_to_gguf(
            toolchain,
            merged_dir,
            work / f"merged-{seed}-{merged_outtype}.gguf",
            outtype=merged_outtype,
            env=env,
        )
    return GgufAdapter(seed=seed, gguf=converted.path, merged_gguf=merged_gguf, hf=adapter_dir)


def hf_to_gguf(
    toolchain: Toolchain,
    model_dir: Path,
    out: Path,
    *,
    outtype: str = "f16",
    env: Mapping[str, str] | None = None,
) -> Path:
    """The HF model in `model_dir` converted to a GGUF of `outtype` at `out` (returned) by the
    pinned llama.cpp's ``convert_hf_to_gguf.py``, in `env` (default: the toolchain's).

    Raises:
        RuntimeError: the conversion failed; the message ends with its output's last lines.
    """
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [
            sys.executable,
            str(toolchain.convert_hf_to_gguf),
            str(model_dir),
            "--outfile",
            str(out),
            "--outtype",
            outtype,
        ],
        env=subprocess_env(toolchain) if env is None else env,
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"converting {model_dir} to GGUF failed:\n{done.stderr[-3000:]}")
    return out
