"""Read a GGUF file's metadata back with gguf-py and check it is what a conversion asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from forgeline_converter.errors import VerificationFailed
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.gguf_py import import_gguf


class GgufInfo(BaseModel):
    """What a GGUF file says about itself."""

    model_config = ConfigDict(frozen=True)

    path: Path
    size_bytes: int
    gguf_type: str
    """``general.type``: ``model`` or ``adapter``."""
    architecture: str
    tensor_count: int
    file_type: int | None
    """``general.file_type`` (llama_ftype); None for files without one (some adapters)."""
    file_type_name: str | None
    context_length: int | None
    chat_template: str | None
    add_bos_token: bool | None
    parameter_count: int = 0


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_gguf_info(path: Path, toolchain: Toolchain) -> GgufInfo:
    """Metadata of the GGUF file at ``path``.

    Raises:
        VerificationFailed: the file is not a readable GGUF.
    """
    gguf = import_gguf(toolchain)
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as error:
        raise VerificationFailed(f"{path.name} is not a readable GGUF file: {error}") from error
    architecture = str(_field(reader, "general.architecture") or "")
    file_type = _field(reader, "general.file_type")
    context_length = _field(reader, f"{architecture}.context_length")
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    template = _field(reader, "tokenizer.chat_template")
    return GgufInfo(
        path=path,
        size_bytes=path.stat().st_size,
        gguf_type=str(_field(reader, "general.type") or "model"),
        architecture=architecture,
        tensor_count=len(reader.tensors),
        file_type=None if file_type is None else int(file_type),
        file_type_name=None if file_type is None else gguf.LlamaFileType(int(file_type)).name,
        context_length=None if context_length is None else int(context_length),
        chat_template=None if template is None else str(template),
        add_bos_token=None if add_bos is None else bool(add_bos),
        parameter_count=sum(int(tensor.n_elements) for tensor in reader.tensors),
    )


class Expectation(BaseModel):
    """What a conversion output must say; None means "not checked"."""

    architecture: str | None = None
    tensor_count: int | None = None
    file_type_name: str | None = None
    context_length: int | None = None
    chat_template: str | None = None
    add_bos_token: bool | None = None


def verify(info: GgufInfo, expected: Expectation) -> None:
    """Compare ``info`` with ``expected``.

    Raises:
        VerificationFailed: naming every field that differs.
    """
    wrong = [
        f"{name} is {getattr(info, name)!r}, expected {want!r}"
        for name, want in expected.model_dump().items()
        if want is not None and getattr(info, name) != want
    ]
    if wrong:
        raise VerificationFailed(f"{info.path.name}: " + "; ".join(wrong))


def special_tokens(path: Path, toolchain: Toolchain) -> dict[str, str]:
    """The BOS and EOS token texts a GGUF's tokenizer names (``bos_token``, ``eos_token``), as
    a chat template refers to them."""
    gguf = import_gguf(toolchain)
    reader = gguf.GGUFReader(path)
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    found: dict[str, str] = {}
    for name in ("bos", "eos"):
        index = _field(reader, f"tokenizer.ggml.{name}_token_id")
        if index is not None and 0 <= int(index) < len(tokens):
            found[f"{name}_token"] = str(tokens[int(index)])
    return found
