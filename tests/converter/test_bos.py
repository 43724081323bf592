"""LLaMA-Factory's merge writes a tokenizer config without ``add_bos_token``; converted as is, the
GGUF makes llama.cpp prepend BOS to every prompt, which the ChatML-trained model never saw. The
converter restores "no BOS", and llama-server's own tokenizer shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from forgeline_converter.gguf_conversion import ConversionPlan, convert_model
from forgeline_converter.llamacpp.tools import convert_hf_to_gguf
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModel

from .conftest import ModelCopy


def tokenize(server_url: str, text: str) -> list[int]:
    """Token ids llama-server gives ``text``, special tokens (BOS) included as for a prompt."""
    response = httpx.post(
        f"{server_url}/tokenize", json={"content": text, "add_special": True}, timeout=30
    )
    response.raise_for_status()
    tokens: list[int] = response.json()["tokens"]
    return tokens


def test_merged_model_without_add_bos_token_gets_no_bos(
    model_copy: ModelCopy,
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    start_llama_server: Any,
    tmp_path: Path,
) -> None:
    merged = model_copy("merged", tokenizer_config={"add_bos_token": None})
    bos = tiny_model.spec.bos_token_id

    by_hand = tmp_path / "by-hand.gguf"
    convert_hf_to_gguf(llamacpp_toolchain, merged, by_hand, "f16", tool_env)
    server = start_llama_server(by_hand)
    assert tokenize(server.base_url, "hello")[0] == bos  # the bug the converter fixes
    server.stop()

    result = convert_model(
        merged, tmp_path / "out", ConversionPlan(quantizations=["Q8_0"]),
        llamacpp_toolchain, tool_env,
    )  # fmt: skip
    assert result.add_bos_token is False
    for item in result.files:
        assert item.info.add_bos_token is False
    server = start_llama_server(result.files[-1].path)
    tokens = tokenize(server.base_url, "hello")
    assert tokens
    assert bos not in tokens


def test_an_explicit_bos_setting_wins(
    model_copy: ModelCopy,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    tmp_path: Path,
) -> None:
    source = model_copy()
    result = convert_model(
        source, tmp_path / "out", ConversionPlan(add_bos_token=True), llamacpp_toolchain, tool_env
    )
    assert result.files[0].info.add_bos_token is True
    assert (source / "tokenizer_config.json").read_text().count('"add_bos_token": false') == 1
