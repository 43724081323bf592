"""HF directory → GGUF with the real llama.cpp tools: every outtype, several quantization types
from one f16 file, metadata read back, a perplexity per file, and nothing left in temp space."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from forgeline_converter.gguf_conversion import ConversionPlan, ConversionResult, convert_model
from forgeline_converter.llamacpp.tools import OutType
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import CHATML_TEMPLATE, TinyModel

from .conftest import QUANTIZATIONS


def test_one_f16_file_is_quantized_to_every_type(quantized: ConversionResult) -> None:
    intermediate, *outputs = quantized.files
    assert intermediate.role == "intermediate"
    assert intermediate.info.file_type_name == "MOSTLY_F16"
    assert [f.quantization for f in outputs] == list(QUANTIZATIONS)
    assert [f.info.file_type_name for f in outputs] == [f"MOSTLY_{q}" for q in QUANTIZATIONS]
    for item in quantized.files:
        assert item.path.is_file()
        assert item.info.architecture == "llama"
        assert item.info.tensor_count == 21
        assert item.info.context_length == 2048
        assert item.info.chat_template == CHATML_TEMPLATE
        assert item.info.add_bos_token is False
        assert len(item.sha256) == 64
        assert not item.fallback_tensors


def test_smaller_types_give_smaller_files(quantized: ConversionResult) -> None:
    size = {f.quantization: f.info.size_bytes for f in quantized.files}
    assert size["Q4_0"] < size["Q5_K_M"] < size["Q6_K"] < size["Q8_0"] < size["f16"]
    assert size["Q4_K_M"] < size["Q5_K_M"]


def test_every_file_has_a_perplexity_close_to_f16(quantized: ConversionResult) -> None:
    figures = {f.quantization: f.perplexity for f in quantized.files}
    assert all(v is not None and math.isfinite(v) and v > 1 for v in figures.values())
    f16 = figures["f16"]
    assert f16 is not None
    # Q8_0 is nearly lossless; the others stay within a few percent on the random tiny model.
    assert abs((figures["Q8_0"] or 0) - f16) / f16 < 0.01
    assert all(abs((v or 0) - f16) / f16 < 0.10 for v in figures.values())


def test_nothing_is_left_in_temp_space(quantized: ConversionResult) -> None:
    work = quantized.files[0].path.parent.parent
    assert [p.name for p in work.iterdir()] == ["out"]


@pytest.mark.parametrize(
    ("outtype", "file_type"),
    [("f32", "ALL_F32"), ("bf16", "MOSTLY_BF16"), ("q8_0", "MOSTLY_Q8_0")],
)
def test_other_outtypes(
    outtype: OutType,
    file_type: str,
    tiny_model: TinyModel,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    tmp_path: Path,
) -> None:
    result = convert_model(
        tiny_model.path,
        tmp_path / "out",
        ConversionPlan(outtype=outtype),
        llamacpp_toolchain,
        tool_env,
    )
    (only,) = result.files
    assert only.info.file_type_name == file_type
    assert only.info.tensor_count == 21
    assert only.path == tmp_path / "out" / f"model-{outtype}.gguf"
    assert result.llamacpp_version == llamacpp_toolchain.version
