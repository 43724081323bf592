"""Hub repositories as an import sees them: hub ids (``hf:ORG/NAME[@REVISION]``,
``modelscope:ORG/NAME[@REVISION]``) and the registry names they default to; what a repository
holds (its files at one commit, with the hub's digests); which of those files the model needs
(:func:`select_files`), and whether loading it would run the repository's own code
(:func:`remote_code`).

Nothing here talks to a hub: `hub_clients` does, and `hub` runs the import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from forgeline_kit.errors import InvalidArgument

__all__ = [
    "HUGGING_FACE",
    "METADATA_FILES",
    "MODELSCOPE",
    "HubId",
    "RemoteFile",
    "RemoteSnapshot",
    "Selection",
    "default_model_name",
    "is_hub_id",
    "is_weights_index",
    "parse_hub_id",
    "remote_code",
    "select_files",
]

HUGGING_FACE: Final = "huggingface"
MODELSCOPE: Final = "modelscope"
#: The prefix of a hub id -> the hub.
_SCHEMES: Final = {"hf": HUGGING_FACE, "modelscope": MODELSCOPE}
_PREFIX: Final = {hub: scheme for scheme, hub in _SCHEMES.items()}
#: The branch each hub's client downloads when no revision is given.
_DEFAULT_REVISION: Final = {HUGGING_FACE: "main", MODELSCOPE: "master"}

_REPO_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,255}")


# --- hub ids -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubId:
    """A repository of a model hub at a revision, as in ``hf:Qwen/Qwen2.5-0.5B-Instruct@main``."""

    hub: str
    repo_id: str
    #: As given, else the hub's default branch.
    revision: str

    @property
    def scheme(self) -> str:
        """``hf`` or ``modelscope``."""
        return _PREFIX[self.hub]

    def __str__(self) -> str:
        return f"{self.scheme}:{self.repo_id}@{self.revision}"


def is_hub_id(text: str) -> bool:
    """Whether `text` names a hub repository (``hf:...`` or ``modelscope:...``) rather than a
    registry model."""
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme in _SCHEMES


def parse_hub_id(text: str, field: str = "model") -> HubId:
    """Parse ``hf:ORG/NAME[@REVISION]`` or ``modelscope:ORG/NAME[@REVISION]``.

    Raises:
        InvalidArgument: `text` is not a hub id of that form (the message shows the form).
    """
    scheme, sep, rest = text.partition(":")
    form = "hf:ORG/NAME[@REVISION] or modelscope:ORG/NAME[@REVISION]"
    if not sep or scheme not in _SCHEMES:
        raise InvalidArgument(f"{field} {text!r} is not a hub id: use {form}", field=field)
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts):
        raise InvalidArgument(
            f"{field} {text!r}: {repo_id!r} is not a repository id: use {form}, for example "
            "hf:Qwen/Qwen2.5-0.5B-Instruct",
            field=field,
        )
    if at and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise InvalidArgument(
            f"{field} {text!r}: {revision!r} is not a revision (a branch, tag or commit)",
            field=field,
        )
    hub = _SCHEMES[scheme]
    return HubId(hub, repo_id, revision or _DEFAULT_REVISION[hub])


def default_model_name(repo_id: str) -> str:
    """The registry name of an import: the repository id itself (``Qwen/Qwen2.5-0.5B-Instruct``;
    registry names allow one ``/`` and are case-sensitive), with any character the registry
    does not allow replaced by ``-``."""
    segments = []
    for part in repo_id.split("/"):
        cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", part).lstrip("._-")
        segments.append(cleaned or "model")
    return "/".join(segments)[:128]


# --- what a repository holds, and what the model needs ----------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub repository, as the hub lists it."""

    path: str
    size: int
    #: ``sha256:<hex>`` (Git LFS, ModelScope ``Sha256``), ``git-blob-sha1:<hex>``, or empty.
    hub_digest: str


@dataclass(frozen=True)
class RemoteSnapshot:
    """A repository resolved to one commit, with its files."""

    hub_id: HubId
    commit: str
    #: The endpoint the client talked to, without credentials.
    endpoint: str
    files: tuple[RemoteFile, ...]
    tool_versions: dict[str, str] = field(default_factory=dict)

    def file(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)


#: Small files read before anything else: they decide what else is needed.
METADATA_FILES: Final = (
    "config.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
#: Weights and checkpoints in formats Forgeline does not load, or copies of the weights in them.
_OTHER_FORMATS: Final = (
    ".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf", ".ggml", ".pth", ".pt", ".ckpt",
    ".tflite", ".mlmodel", ".ot", ".nemo", ".npz", ".pkl", ".pickle", ".joblib", ".keras",
    ".tar", ".gz", ".tgz", ".zip", ".7z",
)  # fmt: skip
_MEDIA: Final = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".pdf", ".mp4", ".wav")
#: Python files that make transformers run a repository's code (with an ``auto_map``).
_REMOTE_CODE_FILE = re.compile(
    r"(modeling|configuration|tokenization|processing|image_processing|feature_extraction)_\w+\.py"
)


@dataclass(frozen=True)
class Selection:
    """The files an import downloads, and why each other file is left out."""

    paths: tuple[str, ...]
    skipped: dict[str, str]


def is_weights_index(name: str) -> bool:
    return name.endswith(".index.json") and (
        "safetensors" in name or name.startswith("pytorch_model")
    )


def select_files(
    files: Iterable[RemoteFile],
    indexes: dict[str, dict[str, Any]] | None = None,
    *,
    trust_remote_code: bool = False,
    safetensors_only: bool = False,
) -> Selection:
    """What the model needs of a repository's files (at its root only).

    Weights: the safetensors files when there are any, else PyTorch ``pytorch_model*.bin``; when
    a weight index (``model.safetensors.index.json``) is given in `indexes`, only the shards its
    ``weight_map`` names (repositories that also ship a ``consolidated.safetensors`` copy keep
    it out), else the single ``model.safetensors`` when present. Every other small file at the
    root (config, tokenizer, generation config, chat template, README, licence) comes along;
    other weight formats, archives, media and ``.gitattributes`` do not; ``*.py`` files only
    with `trust_remote_code`.

    Raises:
        InvalidArgument: the repository has no safetensors or PyTorch weights at its root (with
            `safetensors_only`: no safetensors; PyTorch ``.bin`` files are pickles, which can run
            code when loaded).
    """
    indexes = indexes or {}
    skipped: dict[str, str] = {}
    root: list[RemoteFile] = []
    for item in files:
        if "/" in item.path:
            skipped[item.path] = "in a subdirectory (copies in other layouts, such as original/)"
        else:
            root.append(item)
    names = {f.path for f in root}
    safetensors = sorted(n for n in names if n.endswith(".safetensors"))
    bins = sorted(n for n in names if re.fullmatch(r"pytorch_model.*\.bin", n))
    weights: set[str]
    if safetensors:
        kind, found = "safetensors", safetensors
    elif bins and safetensors_only:
        raise InvalidArgument(
            "the repository's weights are PyTorch pickles (pytorch_model*.bin), which can run code "
            "when loaded: only safetensors weights are imported here; an operator can import it "
            "with `forgeline import`",
            field="model",
        )
    elif bins:
        kind, found = "PyTorch", bins
    else:
        others = sorted(n for n in names if n.endswith(_OTHER_FORMATS))
        raise InvalidArgument(
            "the repository has no safetensors or PyTorch weights at its root"
            + (f" (it holds {', '.join(others[:5])})" if others else "")
            + ": Forgeline imports Hugging Face-layout models; a GGUF file can be pushed with "
            "`forgeline push`",
            field="model",
        )
    index_name = next(
        (
            n
            for n in sorted(names)
            if is_weights_index(n) and ("safetensors" in n) == bool(safetensors)
        ),
        None,
    )
    if index_name is not None and index_name in indexes:
        weight_map = indexes[index_name].get("weight_map") or {}
        # An index naming none of the files present says nothing: take them all.
        weights = ({str(v) for v in weight_map.values()} & set(found)) or set(found)
        weights.add(index_name)
    elif kind == "safetensors" and "model.safetensors" in names:
        weights = {"model.safetensors"}
    else:
        weights = set(found) | ({index_name} if index_name else set())
    chosen = []
    for item in root:
        name = item.path
        lower = name.lower()
        if name in weights:
            chosen.append(name)
        elif name in found or is_weights_index(name):
            skipped[name] = f"not among the {kind} weights the model loads"
        elif lower.endswith(".safetensors") or re.fullmatch(r"pytorch_model.*\.bin", lower):
            skipped[name] = "a copy of the weights in another format"
        elif lower.endswith((".bin", *_OTHER_FORMATS)):
            skipped[name] = "weights or state in a format the model does not load from"
        elif lower.endswith(_MEDIA) or name == ".gitattributes":
            skipped[name] = "not needed to load the model"
        elif lower.endswith(".py") and not trust_remote_code:
            skipped[name] = "code (imported only with trust_remote_code)"
        else:
            chosen.append(name)
    return Selection(tuple(sorted(chosen)), dict(sorted(skipped.items())))


def remote_code(files: Iterable[RemoteFile], directory: Path) -> list[str]:
    """Why loading the repository would run its own code (empty when it would not): an
    ``auto_map`` in ``config.json`` or ``tokenizer_config.json`` (read from `directory`), or
    modeling/configuration/tokenization ``.py`` files."""
    reasons = []
    for name in ("config.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            classes = sorted({str(v) for v in _flatten(auto_map)})
            reasons.append(f"{name} has an auto_map ({', '.join(classes[:4])})")
    code = sorted(f.path for f in files if _REMOTE_CODE_FILE.fullmatch(PurePosixPath(f.path).name))
    if code:
        reasons.append(f"it ships {', '.join(code[:6])}")
    return reasons


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    elif value is not None:
        yield value
