"""Small helpers shared by the registry tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from forgeline_proto.registry.v1 import registry_pb2 as pb


def write_model_dir(directory: Path, seed: int = 0, weights_bytes: int = 4096) -> Path:
    """A small model-shaped directory whose content depends on `seed`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(f'{{"seed": {seed}}}')
    (directory / "tokenizer.json").write_text('{"shared": true}')  # identical across seeds
    block = hashlib.sha256(str(seed).encode()).digest()
    repeats = -(-weights_bytes // len(block))
    (directory / "model.safetensors").write_bytes((block * repeats)[:weights_bytes])
    return directory


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            stream.write(chunk)
            left -= len(chunk)
    return path


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact(path: str, data: bytes, kind: int = pb.ARTIFACT_KIND_OTHER) -> pb.Artifact:
    return pb.Artifact(path=path, kind=kind, sha256=sha256_of(data), size_bytes=len(data))  # type: ignore[arg-type]


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
