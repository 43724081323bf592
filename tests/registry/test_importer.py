"""Classifying a downloaded model directory: artifact kinds, skipped bookkeeping, safe export
paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline_kit.errors import InvalidArgument
from forgeline_proto.registry.v1 import registry_pb2 as pb
from forgeline_registry_client.importer import guess_version_kind, safe_target, scan_directory


def _touch(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")


def test_a_hugging_face_download_is_classified_and_its_bookkeeping_skipped(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "README.md",
        ".gitattributes",
        ".cache/huggingface/download/model.safetensors.metadata",
        ".git/HEAD",
    )
    found = {a.path: a.kind for a in scan_directory(tmp_path)}
    assert found == {
        "README.md": pb.ARTIFACT_KIND_OTHER,
        "config.json": pb.ARTIFACT_KIND_MODEL_CONFIG,
        "generation_config.json": pb.ARTIFACT_KIND_MODEL_CONFIG,
        "model-00001-of-00002.safetensors": pb.ARTIFACT_KIND_HF_WEIGHTS,
        "model-00002-of-00002.safetensors": pb.ARTIFACT_KIND_HF_WEIGHTS,
        "model.safetensors.index.json": pb.ARTIFACT_KIND_HF_WEIGHTS,
        "special_tokens_map.json": pb.ARTIFACT_KIND_TOKENIZER,
        "tokenizer.json": pb.ARTIFACT_KIND_TOKENIZER,
        "tokenizer_config.json": pb.ARTIFACT_KIND_TOKENIZER,
    }
    assert guess_version_kind(scan_directory(tmp_path)) == pb.VERSION_KIND_BASE


def test_a_modelscope_download_and_gguf_and_adapter_directories(tmp_path: Path) -> None:
    ms = tmp_path / "ms"
    _touch(ms, "configuration.json", "config.json", "pytorch_model.bin", ".mdl", ".msc")
    assert [a.path for a in scan_directory(ms)] == [
        "config.json", "configuration.json", "pytorch_model.bin",
    ]  # fmt: skip
    gguf = tmp_path / "gguf"
    _touch(gguf, "tiny-IQ3_XXS.gguf", "Modelfile")
    scanned = scan_directory(gguf)
    assert [(a.path, a.gguf_file_type) for a in scanned] == [
        ("Modelfile", ""),
        ("tiny-IQ3_XXS.gguf", "IQ3_XXS"),
    ]
    assert guess_version_kind(scanned) == pb.VERSION_KIND_GGUF
    adapter = tmp_path / "adapter"
    _touch(adapter, "adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl")
    assert guess_version_kind(scan_directory(adapter)) == pb.VERSION_KIND_ADAPTER


def test_export_paths_cannot_leave_the_target(tmp_path: Path) -> None:
    assert safe_target(tmp_path, "a/b.json") == tmp_path / "a" / "b.json"
    for path in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(InvalidArgument):
            safe_target(tmp_path, path)
    with pytest.raises(InvalidArgument, match="not a directory"):
        scan_directory(tmp_path / "missing")


def test_a_link_out_of_the_directory_is_refused_and_one_inside_is_read(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights").mkdir()
    (model / "weights" / "model.safetensors").write_bytes(b"w")
    (model / "model.safetensors").symlink_to(model / "weights" / "model.safetensors")

    assert {a.path for a in scan_directory(model)} == {
        "config.json",
        "model.safetensors",
        "weights/model.safetensors",
    }

    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (model / "tokenizer.model").symlink_to(secret)
    with pytest.raises(InvalidArgument) as refused:
        scan_directory(model)
    assert "tokenizer.model is a symbolic link to" in refused.value.message
    assert "cp -L" in refused.value.message
