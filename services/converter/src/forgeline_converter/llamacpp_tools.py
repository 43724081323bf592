"""llama.cpp's conversion tools, one function each: HF → GGUF, GGUF → quantized GGUF."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.gguf_py import subprocess_env
from forgeline_kit.subprocesses import ToolRun, run_tool

OutType = Literal["f32", "f16", "bf16", "q8_0"]


def convert_hf_to_gguf(
    toolchain: Toolchain,
    model_dir: Path,
    outfile: Path,
    outtype: OutType,
    env: Mapping[str, str],
) -> ToolRun:
    """``convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUTFILE``."""
    command: list[str | Path] = [
        sys.executable, toolchain.convert_hf_to_gguf, model_dir,
        "--outtype", outtype, "--outfile", outfile,
    ]  # fmt: skip
    return run_tool("convert_hf_to_gguf.py", command, env=subprocess_env(toolchain, env))


def quantize(
    toolchain: Toolchain, source: Path, target: Path, quant_type: str, env: Mapping[str, str]
) -> ToolRun:
    """``llama-quantize SOURCE TARGET TYPE`` (types as llama-quantize names them, e.g. Q4_K_M)."""
    return run_tool(
        "llama-quantize", [toolchain.llama_quantize, source, target, quant_type], env=env
    )
