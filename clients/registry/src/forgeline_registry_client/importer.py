"""Model directories in and out: what each file of a HF/ModelScope directory is, and where a
version's files go when it is exported.

`scan_directory` classifies the files of a directory as downloaded from Hugging Face or
ModelScope (or written by transformers, PEFT, LLaMA-Factory or llama.cpp) into artifact kinds,
skipping the download tools' own bookkeeping. Exporting is the reverse: every artifact is
written at its path under the target directory, so a version pushed from a directory that
transformers, llama.cpp or Ollama loaded comes back as one they load again.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from forgeline_kit.errors import InvalidArgument
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.names import check_artifact_path

__all__ = [
    "LocalArtifact",
    "guess_media_type",
    "guess_version_kind",
    "local_artifact",
    "safe_target",
    "scan_directory",
]

#: Files and directories that download tools keep for themselves, never part of a model.
_SKIPPED_DIRS = frozenset({".git", ".cache", ".huggingface", "__pycache__", ".ipynb_checkpoints"})
_SKIPPED_FILES = frozenset({".gitattributes", ".DS_Store", ".mdl", ".msc", ".mv"})

_TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "spiece.model",
        "sentencepiece.bpe.model",
    }
)
_CONFIG_FILES = frozenset(
    {"config.json", "generation_config.json", "configuration.json", "preprocessor_config.json"}
)
_ADAPTER_FILES = frozenset(
    {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
)
_METRICS_FILES = re.compile(
    r"(trainer_log\.jsonl|trainer_state\.json|all_results\.json|\w*_results\.json|metrics\.jsonl?)"
)
_TRAINING_CONFIG = re.compile(
    r"(training_args\.(ya?ml|json)|train\w*\.(ya?ml)|llamafactory\w*\.ya?ml)"
)
_GGUF_TYPE = re.compile(
    r"[-_.]((?:I?Q\d(?:_[A-Z0-9]+)*)|F16|BF16|F32)(?:[-_.][^.]*)?\.gguf$", re.IGNORECASE
)


_MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".gguf": "application/octet-stream",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".png": "image/png",
    ".model": "application/octet-stream",
}


def guess_media_type(path: str) -> str:
    """The media type of an artifact from its path, ``application/octet-stream`` if unknown."""
    name = path.rsplit("/", 1)[-1]
    if name == "Modelfile":
        return "text/plain"
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass(frozen=True)
class LocalArtifact:
    """A file of a local directory and what it holds."""

    path: str
    file: Path
    kind: pb.ArtifactKind.ValueType
    media_type: str
    gguf_file_type: str = ""


def _kind(path: str) -> tuple[pb.ArtifactKind.ValueType, str]:
    name = PurePosixPath(path).name
    lower = name.lower()
    if name in _ADAPTER_FILES:
        return pb.ARTIFACT_KIND_LORA_ADAPTER, ""
    if lower.endswith(".gguf"):
        match = _GGUF_TYPE.search(name)
        return pb.ARTIFACT_KIND_GGUF, match.group(1).upper() if match else ""
    if lower.endswith(".safetensors") or re.fullmatch(r"pytorch_model.*\.bin", lower):
        return pb.ARTIFACT_KIND_HF_WEIGHTS, ""
    if lower.endswith(".index.json") and ("safetensors" in lower or "pytorch_model" in lower):
        return pb.ARTIFACT_KIND_HF_WEIGHTS, ""
    if name in _CONFIG_FILES:
        return pb.ARTIFACT_KIND_MODEL_CONFIG, ""
    if name in _TOKENIZER_FILES:
        return pb.ARTIFACT_KIND_TOKENIZER, ""
    if name == "Modelfile" or lower.endswith(".modelfile"):
        return pb.ARTIFACT_KIND_OLLAMA_MODELFILE, ""
    if "imatrix" in lower:
        return pb.ARTIFACT_KIND_IMATRIX, ""
    if _TRAINING_CONFIG.fullmatch(lower):
        return pb.ARTIFACT_KIND_TRAINING_CONFIG, ""
    if _METRICS_FILES.fullmatch(lower):
        return pb.ARTIFACT_KIND_METRICS, ""
    if lower.endswith((".png", ".svg", ".jpg")):
        return pb.ARTIFACT_KIND_PLOT, ""
    if lower.endswith((".jsonl", ".parquet", ".csv")):
        return pb.ARTIFACT_KIND_DATASET, ""
    if re.match(r"(checkpoint-\d+|global_step\d+)/", path):
        return pb.ARTIFACT_KIND_CHECKPOINT, ""
    return pb.ARTIFACT_KIND_OTHER, ""


def local_artifact(file: Path, path: str) -> LocalArtifact:
    """`file`, pushed as the artifact at `path`, with its kind (for files chosen one by one, as
    a hub import does, rather than a whole directory)."""
    path = check_artifact_path(path, f"file {path}")
    kind, gguf_type = _kind(path)
    return LocalArtifact(path, file, kind, guess_media_type(path), gguf_type)


def scan_directory(directory: Path) -> list[LocalArtifact]:
    """Every file of a model directory, with its artifact kind, in path order.

    Raises:
        InvalidArgument: the directory does not exist, is empty, or holds a file whose path
            cannot be an artifact path (it is named in the message).
    """
    root = directory.absolute()
    if not root.is_dir():
        raise InvalidArgument(f"{directory} is not a directory", field="directory")
    found = []
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if any(part in _SKIPPED_DIRS for part in relative.parts[:-1]):
            continue
        if (
            file.name in _SKIPPED_FILES
            or not file.is_file()
            or (file.is_symlink() and not file.exists())
        ):
            continue
        if file.is_symlink() and not file.resolve().is_relative_to(root.resolve()):
            # Following it would push whatever the link names (a key, another user's file).
            raise InvalidArgument(
                f"{relative} is a symbolic link to {file.resolve()}, outside {directory}: a "
                "push reads only the directory's own files. Copy the file in (cp -L) and push "
                "again",
                field="directory",
            )
        path = check_artifact_path(relative.as_posix(), f"file {relative}")
        kind, gguf_type = _kind(path)
        found.append(LocalArtifact(path, file, kind, guess_media_type(path), gguf_type))
    if not found:
        raise InvalidArgument(f"{directory} holds no files to push", field="directory")
    return found


def guess_version_kind(artifacts: list[LocalArtifact]) -> pb.VersionKind.ValueType:
    """What a directory holds as a whole: GGUF, an adapter, or a full (base) model."""
    kinds = {a.kind for a in artifacts}
    if pb.ARTIFACT_KIND_GGUF in kinds:
        return pb.VERSION_KIND_GGUF
    if pb.ARTIFACT_KIND_LORA_ADAPTER in kinds:
        return pb.VERSION_KIND_ADAPTER
    if pb.ARTIFACT_KIND_HF_WEIGHTS in kinds:
        return pb.VERSION_KIND_BASE
    if kinds <= {pb.ARTIFACT_KIND_DATASET}:
        return pb.VERSION_KIND_DATASET
    return pb.VERSION_KIND_OTHER


def safe_target(directory: Path, path: str) -> Path:
    """Where an artifact goes under `directory`, refusing any path that would leave it."""
    check_artifact_path(path, "artifact.path")
    root = directory.absolute()
    target = (root / path).absolute()
    if root not in target.parents:
        raise InvalidArgument(f"artifact path {path!r} leaves the target directory", field="path")
    return target
