"""The Hugging Face model directory a conversion starts from: checked before any tool runs.

Checks here fail in a second with a clear message where ``convert_hf_to_gguf.py`` would fail
after loading the weights with a traceback.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeline_converter.errors import (
    ConversionError,
    MissingTokenizer,
    RemoteCodeNotTrusted,
    UnsupportedArchitecture,
)
from forgeline_kit.llamacpp import Toolchain

CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Vocabulary files llama.cpp's converter reads: SentencePiece, or a `tokenizers` JSON.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
#: The files whose ``auto_map`` makes transformers load classes from the model's own ``.py``
#: files (the registry's hub importer looks at the same two).
AUTO_MAP_FILES = (CONFIG, TOKENIZER_CONFIG)
#: The setting that lets conversions run a model's own code (``ConverterSettings``; a test keeps
#: the name in step).
TRUST_REMOTE_CODE_SETTING: Final = "FORGELINE_CONVERTER_TRUST_REMOTE_CODE"


class HfConfig(BaseModel):
    """The part of ``config.json`` the converter looks at."""

    model_config = ConfigDict(extra="allow")

    architectures: list[str] = Field(min_length=1)


class SourceModel(BaseModel):
    """A checked model directory."""

    model_config = ConfigDict(frozen=True)

    path: Path
    architecture: str
    weights_bytes: int
    tokenizer_config: dict[str, object]

    @property
    def add_bos_token(self) -> bool | None:
        """The tokenizer's own ``add_bos_token``; None where the file does not say."""
        value = self.tokenizer_config.get("add_bos_token")
        return value if isinstance(value, bool) else None


@cache
def supported_architectures(convert_script: Path) -> frozenset[str]:
    """The HF architectures the pinned ``convert_hf_to_gguf.py`` converts.

    Read from its ``conversion/__init__.py`` table without importing it (that imports torch).
    """
    table = convert_script.parent / "conversion" / "__init__.py"
    tree = ast.parse(table.read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "TEXT_MODEL_MAP"
            and node.value is not None
        ):
            mapping = ast.literal_eval(node.value)
            return frozenset(str(name) for name in mapping)
    raise ConversionError(f"no TEXT_MODEL_MAP in {table}: the llama.cpp toolchain is damaged")


def remote_code(model_dir: Path) -> list[str]:
    """Why loading ``model_dir`` with transformers would run the model's own code (empty when it
    would not): an ``auto_map`` in ``config.json`` or ``tokenizer_config.json``, or ``.py`` files
    anywhere in the directory."""
    reasons = []
    for name in AUTO_MAP_FILES:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable config.json fails the checks after this one
        if isinstance(data, dict) and data.get("auto_map"):
            reasons.append(f"{name} has an auto_map")
    code = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*.py"))
    if code:
        shown = ", ".join(code[:5]) + (f" and {len(code) - 5} more" if len(code) > 5 else "")
        reasons.append(f"it carries Python files ({shown})")
    return reasons


def check_remote_code(model_dir: Path, trust_remote_code: bool, what: str = "the model") -> None:
    """Refuse ``model_dir`` when it needs its own code and the operator has not trusted that.

    llama.cpp's convert script loads the tokenizers of several architectures with
    ``trust_remote_code=True`` and has no switch to stop it, so the model's code would run in
    the converter: this check is what stands in the way, before any tool starts.

    Raises:
        RemoteCodeNotTrusted: it needs code and ``trust_remote_code`` is off.
    """
    if trust_remote_code:
        return
    reasons = remote_code(model_dir)
    if reasons:
        raise RemoteCodeNotTrusted(
            f"{what} needs its own Python code to load ({'; '.join(reasons)}), and this "
            f"converter does not run a model's code ({TRUST_REMOTE_CODE_SETTING} is off). "
            "Convert a model whose architecture transformers and llama.cpp ship, or, if every "
            f"model in the registry comes from someone you trust, set "
            f"{TRUST_REMOTE_CODE_SETTING}=true on the converter"
        )


def inspect_source(
    model_dir: Path, toolchain: Toolchain, *, trust_remote_code: bool = False
) -> SourceModel:
    """Check that ``model_dir`` is a model llama.cpp can convert.

    Args:
        model_dir: the Hugging Face model directory.
        toolchain: the llama.cpp build that will convert it.
        trust_remote_code: accept a model that needs its own Python code (the operator's
            ``FORGELINE_CONVERTER_TRUST_REMOTE_CODE``).

    Raises:
        ConversionError: no readable ``config.json``.
        RemoteCodeNotTrusted: the model needs its own code and ``trust_remote_code`` is off.
        UnsupportedArchitecture: llama.cpp cannot convert the architecture.
        MissingTokenizer: no tokenizer file.
    """
    try:
        config = HfConfig.model_validate_json((model_dir / CONFIG).read_bytes())
    except (OSError, ValidationError) as error:
        raise ConversionError(
            f"{model_dir} is not a Hugging Face model directory ({CONFIG}: {error})"
        ) from error
    check_remote_code(model_dir, trust_remote_code)
    architecture = config.architectures[0]
    known = supported_architectures(toolchain.convert_hf_to_gguf)
    if architecture not in known:
        raise UnsupportedArchitecture(
            f"llama.cpp {toolchain.version} cannot convert architecture {architecture!r}; "
            "convert a model of a supported architecture (for example LlamaForCausalLM, "
            "Qwen2ForCausalLM)"
        )
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise MissingTokenizer(
            f"{model_dir} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); register the "
            "model with its tokenizer files (a merged model can take its base model's)"
        )
    tokenizer_config: dict[str, object] = {}
    if (model_dir / TOKENIZER_CONFIG).is_file():
        tokenizer_config = json.loads((model_dir / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    weights += sum(p.stat().st_size for p in model_dir.glob("*.bin"))
    return SourceModel(
        path=model_dir,
        architecture=architecture,
        weights_bytes=weights,
        tokenizer_config=tokenizer_config,
    )


def stage_with_bos_setting(source: SourceModel, add_bos_token: bool, staging: Path) -> Path:
    """A view of ``source`` whose ``tokenizer_config.json`` states ``add_bos_token``.

    LLaMA-Factory's merge rewrites the tokenizer config without ``add_bos_token``, and a
    SentencePiece GGUF without ``tokenizer.ggml.add_bos_token`` makes llama.cpp prepend BOS to
    every prompt: a model trained without BOS then answers worse. Every other file is a symlink,
    so nothing large is copied.
    """
    staging.mkdir(parents=True)
    for entry in source.path.iterdir():
        if entry.name != TOKENIZER_CONFIG:
            (staging / entry.name).symlink_to(entry.absolute())
    config = {**source.tokenizer_config, "add_bos_token": add_bos_token}
    (staging / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return staging
