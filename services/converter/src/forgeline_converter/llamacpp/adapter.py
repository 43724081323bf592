"""A PEFT LoRA adapter → a GGUF adapter that llama.cpp applies on top of its base GGUF."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from forgeline_converter.errors import ConversionError, VerificationFailed
from forgeline_converter.gguf_conversion import sha256_of
from forgeline_converter.llamacpp.gguf_info import GgufInfo, read_gguf_info
from forgeline_converter.llamacpp.source import check_remote_code, inspect_source
from forgeline_converter.llamacpp.tools import OutType, convert_lora_to_gguf
from forgeline_kit.llamacpp import Toolchain

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class ConvertedAdapter(BaseModel):
    """A verified GGUF adapter."""

    model_config = ConfigDict(frozen=True)

    path: Path
    sha256: str
    info: GgufInfo
    tool_wall_s: float
    llamacpp_version: str


def convert_adapter(
    adapter_dir: Path,
    base_dir: Path,
    output_dir: Path,
    toolchain: Toolchain,
    env: Mapping[str, str],
    *,
    outtype: OutType = "f16",
    work_root: Path | None = None,
    trust_remote_code: bool = False,
) -> ConvertedAdapter:
    """Convert the LoRA adapter in ``adapter_dir`` (trained on ``base_dir``) to a GGUF adapter.

    ``trust_remote_code`` accepts an adapter or base that needs its own Python code, as for
    :func:`.core.convert_model`.

    Raises:
        ConversionError: not a LoRA adapter; UnsupportedArchitecture / MissingTokenizer for the
            base; RemoteCodeNotTrusted when the adapter or base needs its own code and
            ``trust_remote_code`` is off; VerificationFailed when the output is not an adapter
            of the base's architecture. Nothing is left in ``output_dir`` or temp space on
            failure.
    """
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConversionError(f"{adapter_dir} is not a PEFT adapter ({error})") from error
    if config.get("peft_type") != "LORA":
        raise ConversionError(
            f"{adapter_dir} is a {config.get('peft_type')!r} adapter; only LoRA converts to GGUF"
        )
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        raise ConversionError(f"{adapter_dir} has no adapter weights ({ADAPTER_WEIGHTS[0]})")
    check_remote_code(adapter_dir, trust_remote_code, "the adapter")
    inspect_source(base_dir, toolchain, trust_remote_code=trust_remote_code)
    root = work_root or output_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-lora-", dir=root))
    try:
        target = work / f"{adapter_dir.name}-lora-{outtype}.gguf"
        run = convert_lora_to_gguf(
            toolchain, adapter_dir, base_dir, target, outtype, env,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        info = read_gguf_info(target, toolchain)
        if info.gguf_type != "adapter" or not info.architecture:
            raise VerificationFailed(
                f"{target.name} is a {info.gguf_type!r} of architecture {info.architecture!r}, "
                "not a LoRA adapter"
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        final = output_dir / target.name
        shutil.move(target, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConvertedAdapter(
        path=final,
        sha256=sha256_of(final),
        info=info.model_copy(update={"path": final}),
        tool_wall_s=run.wall_s,
        llamacpp_version=toolchain.version,
    )
