"""Inputs that cannot be converted end in a clear error, with nothing written and no temporary
files left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline_converter.errors import (
    ConversionError,
    InsufficientDisk,
    InvalidQuantization,
    MissingTokenizer,
    UnsupportedArchitecture,
)
from forgeline_converter.gguf_conversion import ConversionPlan, DiskFree, convert_model
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.tinymodel import TinyModelSpec
from forgeline_kit.tinymodel.tokenizer import write_tokenizer
from forgeline_kit.tinymodel.weights import write_weights

from .conftest import ModelCopy


def convert_and_fail(
    source: Path,
    plan: ConversionPlan,
    toolchain: Toolchain,
    env: dict[str, str],
    work: Path,
    expected: type[ConversionError],
    disk_free: DiskFree | None = None,
) -> ConversionError:
    """Run a conversion that must fail with ``expected``; check it left nothing behind."""
    work.mkdir()
    with pytest.raises(expected) as caught:
        convert_model(
            source, work / "out", plan, toolchain, env, work_root=work, disk_free=disk_free
        )
    assert list(work.iterdir()) == [], "a failed conversion left files behind"
    return caught.value


def test_unsupported_architecture(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    source = model_copy(config={"architectures": ["TinyMysteryForCausalLM"]})
    error = convert_and_fail(
        source, ConversionPlan(), llamacpp_toolchain, tool_env, tmp_path / "w",
        UnsupportedArchitecture,
    )  # fmt: skip
    assert "TinyMysteryForCausalLM" in str(error)
    assert error.reason == "unsupported_architecture"


def test_missing_tokenizer(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    source = model_copy(drop=("tokenizer.model",))
    error = convert_and_fail(
        source, ConversionPlan(), llamacpp_toolchain, tool_env, tmp_path / "w", MissingTokenizer
    )
    assert "tokenizer.model" in str(error)


def test_unknown_quantization_type(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    error = convert_and_fail(
        model_copy(), ConversionPlan(quantizations=["Q4_K_M", "Q3_FANCY"]),
        llamacpp_toolchain, tool_env, tmp_path / "w", InvalidQuantization,
    )  # fmt: skip
    assert "Q3_FANCY" in str(error)
    assert "Q4_K_M" in str(error)


def test_not_enough_free_disk(
    model_copy: ModelCopy, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    error = convert_and_fail(
        model_copy(), ConversionPlan(quantizations=["Q8_0"]), llamacpp_toolchain, tool_env,
        tmp_path / "w", InsufficientDisk, disk_free=lambda _path: 1_000_000,
    )  # fmt: skip
    assert "MiB" in str(error)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose width (80) no k-quant or Q4_0 block size divides.

    TinyModelSpec refuses such shapes (they are wrong for the tests that quantize), so the
    validator is bypassed on purpose here.
    """
    spec = TinyModelSpec.model_construct(
        **{**TinyModelSpec().model_dump(), "hidden_size": 80, "intermediate_size": 160}
    )
    target = tmp_path_factory.mktemp("odd")
    write_tokenizer(target, spec)
    write_weights(target, spec, seed=1)
    return target


@pytest.mark.parametrize("quantization", ["Q4_K_M"])
def test_quantization_the_shapes_forbid(
    quantization: str,
    odd_model: Path,
    llamacpp_toolchain: Toolchain,
    tool_env: dict[str, str],
    tmp_path: Path,
) -> None:
    error = convert_and_fail(
        odd_model, ConversionPlan(quantizations=[quantization]), llamacpp_toolchain, tool_env,
        tmp_path / "w", InvalidQuantization,
    )  # fmt: skip
    assert "not divisible by" in str(error)
    assert quantization in str(error)


def test_shape_fallback_can_be_accepted(
    odd_model: Path, llamacpp_toolchain: Toolchain, tool_env: dict[str, str], tmp_path: Path
) -> None:
    plan = ConversionPlan(quantizations=["Q4_K_M"], allow_fallback=True)
    result = convert_model(odd_model, tmp_path / "out", plan, llamacpp_toolchain, tool_env)
    quantized = result.files[1]
    assert quantized.info.file_type_name == "MOSTLY_Q4_K_M"
    assert "blk.0.attn_q.weight" in quantized.fallback_tensors
