"""llama.cpp's conversion tools, one function each: HF → GGUF, GGUF → quantized GGUF, LoRA
adapter → GGUF adapter, and the quantization types on offer (perplexity: :mod:`.perplexity`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.gguf_py import subprocess_env
from forgeline_kit.subprocesses import ToolRun, run_tool

OutType = Literal["f32", "f16", "bf16", "q8_0"]

# llama-quantize prints one such line per tensor whose row width the requested type's block size
# does not divide; it then writes that tensor in another type instead of failing.
_FALLBACK = re.compile(
    r"^warning: (?P<tensor>\S+)\s+- ncols\s+(?P<ncols>\d+) not divisible by\s+(?P<block>\d+) "
    r"\(required for type\s+(?P<type>\w+)\).*-> falling back to\s+(?P<fallback>\w+)",
    re.MULTILINE,
)


#: Where transformers would copy a model's own ``.py`` files before importing them, when the
#: operator has not trusted remote code: a path below a file, so creating it fails and nothing
#: is imported.
NO_MODULES_CACHE = os.path.join(os.devnull, "forgeline-remote-code-not-trusted")


def convert_env(
    toolchain: Toolchain, env: Mapping[str, str], modules_dir: Path, *, trust_remote_code: bool
) -> dict[str, str]:
    """The environment of a convert script: ``env`` with the toolchain's gguf-py first, never
    the network, and a model's own code imported only with ``trust_remote_code``.

    ``convert_hf_to_gguf.py`` loads the tokenizers of some architectures (ChatGLM, DeepSeek,
    Hunyuan, Kimi, MiniMax, Nemotron...) with ``trust_remote_code=True`` hard-coded, with no
    option or variable to stop it, and transformers has no setting that refuses remote code. But
    transformers imports a model's code only after copying it into ``HF_MODULES_CACHE``: pointed
    at a path that cannot be created, every such import fails before the code runs. Trusted, the
    copies go to ``modules_dir`` (inside the conversion's temporary directory) so one model's
    code never lingers for the next. ``HF_HUB_OFFLINE`` keeps an ``auto_map`` that names another
    repository (``org/repo--module.Class``) from fetching code from a hub: the converter works
    on downloaded registry versions only.
    """
    tool_env = subprocess_env(toolchain, env)
    tool_env["HF_HUB_OFFLINE"] = "1"
    tool_env["HF_MODULES_CACHE"] = str(modules_dir) if trust_remote_code else NO_MODULES_CACHE
    return tool_env


def convert_hf_to_gguf(
    toolchain: Toolchain,
    model_dir: Path,
    outfile: Path,
    outtype: OutType,
    env: Mapping[str, str],
    *,
    trust_remote_code: bool = False,
) -> ToolRun:
    """``convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUTFILE``; the model's own
    code can be imported only with ``trust_remote_code`` (see :func:`convert_env`)."""
    script = toolchain.convert_hf_to_gguf
    return _convert(toolchain, script, [model_dir], outtype, outfile, env, trust_remote_code)


def convert_lora_to_gguf(
    toolchain: Toolchain,
    adapter_dir: Path,
    base_dir: Path,
    outfile: Path,
    outtype: OutType,
    env: Mapping[str, str],
    *,
    trust_remote_code: bool = False,
) -> ToolRun:
    """``convert_lora_to_gguf.py ADAPTER_DIR --base BASE_DIR --outtype T --outfile OUTFILE``.

    Its own ``--trust-remote-code`` only matters when it fetches the base's config from a hub,
    which ``--base`` (always given) avoids, so it is never passed; the environment decides, as
    for :func:`convert_hf_to_gguf`.
    """
    inputs: list[str | Path] = [adapter_dir, "--base", base_dir]
    script = toolchain.convert_lora_to_gguf
    return _convert(toolchain, script, inputs, outtype, outfile, env, trust_remote_code)


def _convert(
    toolchain: Toolchain,
    script: Path,
    inputs: Sequence[str | Path],
    outtype: OutType,
    outfile: Path,
    env: Mapping[str, str],
    trust_remote_code: bool,
) -> ToolRun:
    """``SCRIPT INPUTS... --outtype OUTTYPE --outfile OUTFILE``, named by the script's file name
    when it fails; the environment is :func:`convert_env`'s, with a model's trusted code copied
    beside `outfile` (so it goes away with the conversion's temporary directory)."""
    command: list[str | Path] = [
        sys.executable, script, *inputs, "--outtype", outtype, "--outfile", outfile,
    ]  # fmt: skip
    tool_env = convert_env(
        toolchain, env, outfile.parent / ".hf-modules", trust_remote_code=trust_remote_code
    )
    return run_tool(script.name, command, env=tool_env)


def quantize(
    toolchain: Toolchain,
    source: Path,
    target: Path,
    quant_type: str,
    env: Mapping[str, str],
    extra_args: Sequence[str] = (),
) -> ToolRun:
    """``llama-quantize [EXTRA_ARGS] SOURCE TARGET TYPE`` (types as llama-quantize names them,
    e.g. Q4_K_M); ``extra_args`` are its options (``--override-kv``, ``--imatrix`` ...)."""
    return run_tool(
        "llama-quantize",
        [toolchain.llama_quantize, *extra_args, source, target, quant_type],
        env=env,
    )


def compute_imatrix(
    toolchain: Toolchain,
    model: Path,
    text: Path,
    outfile: Path,
    env: Mapping[str, str],
    *,
    context_size: int = 512,
    chunks: int = 0,
    threads: int = 2,
) -> ToolRun:
    """``llama-imatrix -m MODEL -f TEXT -o OUTFILE -c CTX [--chunks N]``: the importance matrix
    the IQ types need (and the low-bit k-quants profit from)."""
    command: list[str | Path] = [
        toolchain.llama_imatrix, "--model", model, "--file", text, "--output-file", outfile,
        "--ctx-size", str(context_size), "--threads", str(threads),
    ]  # fmt: skip
    if chunks:
        command += ["--chunks", str(chunks)]
    return run_tool("llama-imatrix", command, env=env)


def fallback_tensors(quantize_output: str) -> dict[str, str]:
    """Tensors llama-quantize wrote in another type because their shape forbids the asked one:
    tensor name → a description such as ``ncols 80 not divisible by 256 (q4_K) -> f16``."""
    return {
        match["tensor"]: (
            f"ncols {match['ncols']} not divisible by {match['block']} ({match['type']}) "
            f"-> {match['fallback']}"
        )
        for match in _FALLBACK.finditer(quantize_output)
    }


_TYPE_LINE = re.compile(r"^\s+\d+\s+or\s+(?P<name>[A-Z0-9_]+)\s*:", re.MULTILINE)


def _quantize_usage(toolchain: Toolchain) -> str:
    """``llama-quantize --help``'s text, which lists the types it offers."""
    result = subprocess.run(  # noqa: S603 - an argument list, no shell
        [str(toolchain.llama_quantize), "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,  # it exits 1 after printing its usage
    )
    return result.stdout + result.stderr


def quantization_types(toolchain: Toolchain) -> tuple[str, ...]:
    """The quantization types this ``llama-quantize`` offers, as its usage text lists them."""
    return tuple(dict.fromkeys(m["name"] for m in _TYPE_LINE.finditer(_quantize_usage(toolchain))))


_TYPE_DESCRIPTION = re.compile(
    r"^\s+\d+\s+or\s+(?P<name>[A-Z0-9_]+)\s*:\s*(?P<description>.*?)\s*$", re.MULTILINE
)
# llama-quantize refuses these without an importance matrix, or writes a poor file: every IQ type,
# and Q2_K_S (llama.cpp's quantize.cpp names the same set, plus the IQ3/IQ4 types it merely
# warns about).
_IMATRIX_PREFIXES = ("IQ",)
_IMATRIX_TYPES = frozenset({"Q2_K_S"})


def requires_imatrix(quant_type: str) -> bool:
    """Whether ``quant_type`` needs an importance matrix."""
    name = quant_type.upper()
    return name.startswith(_IMATRIX_PREFIXES) or name in _IMATRIX_TYPES


def quantization_type_descriptions(toolchain: Toolchain) -> dict[str, str]:
    """Every type ``llama-quantize`` offers with its own description, in its order (the first
    description of a name wins: aliases come after the type they stand for)."""
    described: dict[str, str] = {}
    for match in _TYPE_DESCRIPTION.finditer(_quantize_usage(toolchain)):
        described.setdefault(match["name"], match["description"])
    return described
