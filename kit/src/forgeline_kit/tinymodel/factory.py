"""Writes the tiny model: a complete Hugging Face model directory, offline and deterministic."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from .spec import DEFAULT_SEED, TinyModelSpec

__all__ = ["TinyModel", "write_tiny_model"]


class TinyModel(BaseModel):
    """What :func:`write_tiny_model` wrote: where, from what, and each file's sha256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    seed: int
    spec: TinyModelSpec
    files: dict[str, str]


def write_tiny_model(
    out_dir: Path | str, *, seed: int = DEFAULT_SEED, spec: TinyModelSpec | None = None
) -> TinyModel:
    """Write a random Llama model with a SentencePiece ChatML tokenizer into ``out_dir``.

    The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors``,
    ``tokenizer.model`` and ``tokenizer_config.json``: transformers loads it offline,
    LLaMA-Factory fine-tunes it with ``template: chatml`` and llama.cpp converts and k-quantizes
    it. The same seed and spec give byte-identical files. ``out_dir`` must not exist or be
    empty; the files appear there together (written beside it, then renamed into place), so an
    interrupted call leaves no half-written model.
    """
    spec = spec or TinyModelSpec()
    target = Path(out_dir).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists and is not an empty directory")
    # Imported late: the `tinymodel` extra (torch, transformers, sentencepiece) is needed only
    # to write a model, and torch alone takes seconds to import.
    from .tokenizer import write_tokenizer
    from .weights import write_weights

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared
    try:
        write_tokenizer(staging, spec)
        write_weights(staging, spec, seed=seed)
        for path in staging.iterdir():
            path.chmod(0o644)  # safetensors writes its file owner-only
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TinyModel(path=target, seed=seed, spec=spec, files=_digests(target))


def _digests(directory: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digests[path.name] = digest.hexdigest()
    return digests
