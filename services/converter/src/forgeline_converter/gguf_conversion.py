"""One conversion, without gRPC: HF directory → intermediate GGUF → every quantization asked
for, each file verified and given a quality figure.

Everything is written inside one temporary directory and moved to ``output_dir`` only when all
outputs are verified, so a failure leaves nothing behind; free disk is checked before the first
byte is written.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgeline_converter.errors import InsufficientDisk, InvalidQuantization
from forgeline_converter.llamacpp.gguf_info import Expectation, GgufInfo, read_gguf_info, verify
from forgeline_converter.llamacpp.perplexity import compare_logits, perplexity
from forgeline_converter.llamacpp.source import SourceModel, inspect_source, stage_with_bos_setting
from forgeline_converter.llamacpp.tools import (
    OutType,
    compute_imatrix,
    convert_hf_to_gguf,
    fallback_tensors,
    quantization_types,
    quantize,
)
from forgeline_kit.llamacpp import Toolchain

# GGUF file type names (gguf-py's LlamaFileType) of the convert script's outtypes.
_OUTTYPE_FILE_TYPES: Mapping[str, str] = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
}
# llama-quantize accepts these names as aliases of the file type it records.
_QUANT_ALIASES: Mapping[str, str] = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}
# Bytes per weight of each outtype, against the largest usual source (f32) for the estimate.
_OUTTYPE_RATIO: Mapping[str, float] = {"f32": 1.0, "f16": 0.5, "bf16": 0.5, "q8_0": 0.27}
# A quantized file is at most the size of a Q8_0 one (8.5 bits of 16); F16/BF16/F32 are larger.
_QUANT_RATIO = 0.56
_DISK_MARGIN = 1.10

DiskFree = Callable[[Path], int]
Stage = Literal["CONVERTING", "COMPUTING_IMATRIX", "QUANTIZING", "VERIFYING"]
#: Told each stage as it starts, with the output it concerns (an outtype or quantization type).
StageCallback = Callable[[Stage, str], None]


def _no_progress(stage: Stage, target: str) -> None:
    del stage, target


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


class ConversionPlan(BaseModel):
    """What to make from one model directory."""

    model_config = ConfigDict(frozen=True)

    outtype: OutType = "f16"
    quantizations: Sequence[str] = ()
    """llama-quantize types, made from the one intermediate file."""
    allow_fallback: bool = False
    """Accept quantized files where llama-quantize had to write some tensors in another type."""
    add_bos_token: bool | None = None
    """Whether prompts start with BOS; None takes the source tokenizer's setting, and where it has
    none (a LLaMA-Factory merge drops it), False when its chat template never writes BOS."""
    evaluation_text: Path | None = None
    """Held-out text for the perplexity of every output; None measures nothing."""
    kl_divergence: bool = False
    """Also measure each quantized file's mean KL divergence against the intermediate on the
    evaluation text."""
    evaluation_context: int = 128
    evaluation_chunks: int = 0
    quantize_args: Mapping[str, Sequence[str]] = Field(default_factory=dict)
    """Extra llama-quantize options per type (``--pure``, ``--allow-requantize`` ...)."""
    imatrix_text: Path | None = None
    """Calibration text: an importance matrix is computed from the intermediate and given to
    every quantization (``--imatrix``); None quantizes without one."""
    imatrix_file: Path | None = None
    """An existing importance matrix for every quantization (instead of ``imatrix_text``)."""
    imatrix_chunks: int = 0
    imatrix_context: int = 512


class ConvertedFile(BaseModel):
    """One verified output file."""

    model_config = ConfigDict(frozen=True)

    role: Literal["intermediate", "quantized"]
    quantization: str
    """The outtype (``f16``) or llama-quantize type (``Q4_K_M``)."""
    path: Path
    sha256: str
    info: GgufInfo
    perplexity: float | None = None
    kl_divergence: float | None = None
    same_top_token: float | None = None
    tool_wall_s: float
    fallback_tensors: dict[str, str] = Field(default_factory=dict)


class ConversionResult(BaseModel):
    """Every output of one conversion and the toolchain that made them."""

    model_config = ConfigDict(frozen=True)

    llamacpp_version: str
    architecture: str
    add_bos_token: bool | None
    files: list[ConvertedFile]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def effective_add_bos(source: SourceModel, requested: bool | None) -> bool | None:
    """The BOS setting the GGUF must carry (see :attr:`ConversionPlan.add_bos_token`)."""
    if requested is not None:
        return requested
    if source.add_bos_token is not None:
        return source.add_bos_token
    template = source.tokenizer_config.get("chat_template")
    if isinstance(template, str) and "bos_token" not in template:
        return False
    return None


def normalise_quantizations(toolchain: Toolchain, requested: Sequence[str]) -> list[str]:
    """Upper-case, de-duplicated types; every one must be a type llama-quantize offers."""
    offered = set(quantization_types(toolchain))
    names = list(dict.fromkeys(name.strip().upper() for name in requested))
    unknown = [name for name in names if name not in offered]
    if unknown:
        raise InvalidQuantization(
            f"unknown quantization type(s) {', '.join(unknown)}; llama-quantize offers "
            f"{', '.join(sorted(offered))}",
            field="quantizations",
        )
    return names


def check_disk(source: SourceModel, plan: ConversionPlan, where: Path, disk_free: DiskFree) -> None:
    """Raise :class:`InsufficientDisk` unless ``where`` can hold every output."""
    intermediate = source.weights_bytes * _OUTTYPE_RATIO[plan.outtype] * 2  # source may be f16
    needed = int((intermediate * (1 + _QUANT_RATIO * len(plan.quantizations))) * _DISK_MARGIN)
    free = disk_free(where)
    if free < needed:
        raise InsufficientDisk(
            f"converting {source.path.name} needs about {needed / 2**20:.1f} MiB in {where} "
            f"but {free / 2**20:.1f} MiB are free; free space or point the converter's work "
            "directory at a larger disk"
        )


def convert_model(
    source_dir: Path,
    output_dir: Path,
    plan: ConversionPlan,
    toolchain: Toolchain,
    env: Mapping[str, str],
    *,
    work_root: Path | None = None,
    disk_free: DiskFree | None = None,
    progress: StageCallback = _no_progress,
    trust_remote_code: bool = False,
) -> ConversionResult:
    """Convert ``source_dir`` per ``plan``; the verified files end up in ``output_dir``.

    ``trust_remote_code`` (the operator's ``FORGELINE_CONVERTER_TRUST_REMOTE_CODE``) accepts a
    model that needs its own Python code; without it such a model is refused before any tool
    runs, and the convert script cannot import model code (:func:`.source.check_remote_code`,
    :func:`.llamacpp_tools.convert_env`).

    Raises:
        ConversionError: (a subclass naming the reason) nothing was written to ``output_dir``
            and the temporary files are removed.
        ToolFailed: a llama.cpp tool failed for a reason not recognised above; same cleanup.
    """
    progress("CONVERTING", plan.outtype)
    source = inspect_source(source_dir, toolchain, trust_remote_code=trust_remote_code)
    quantizations = normalise_quantizations(toolchain, plan.quantizations)
    root = work_root or output_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    check_disk(source, plan, root, disk_free or _disk_free)
    add_bos = effective_add_bos(source, plan.add_bos_token)
    stem = source_dir.name
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        model_dir = source_dir
        if add_bos is not None and add_bos != source.add_bos_token:
            model_dir = stage_with_bos_setting(source, add_bos, work / "source")
        expected = Expectation(
            chat_template=_str_or_none(source.tokenizer_config.get("chat_template")),
            add_bos_token=add_bos,
        )
        intermediate = work / f"{stem}-{plan.outtype}.gguf"
        run = convert_hf_to_gguf(
            toolchain, model_dir, intermediate, plan.outtype, env,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        info = read_gguf_info(intermediate, toolchain)
        verify(
            info, expected.model_copy(update={"file_type_name": _OUTTYPE_FILE_TYPES[plan.outtype]})
        )
        # Quantizing keeps the architecture and every tensor; only their types change.
        expected = expected.model_copy(
            update={"architecture": info.architecture, "tensor_count": info.tensor_count}
        )
        progress("VERIFYING", plan.outtype)
        files = [
            _finish(
                "intermediate",
                plan.outtype,
                intermediate,
                info,
                run.wall_s,
                {},
                plan,
                toolchain,
                env,
                work,
            )
        ]
        files += _quantize_all(
            intermediate, stem, expected, quantizations, plan, toolchain, env, work, progress
        )
        placed = _place(files, work, output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConversionResult(
        llamacpp_version=toolchain.version,
        architecture=files[0].info.architecture,
        add_bos_token=add_bos,
        files=placed,
    )


def _place(files: list[ConvertedFile], work: Path, output_dir: Path) -> list[ConvertedFile]:
    """Move the files made in ``work`` to ``output_dir`` (a caller's own file stays put)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    placed = []
    for item in files:
        if work not in item.path.parents:
            placed.append(item)
            continue
        final = output_dir / item.path.name
        shutil.move(item.path, final)
        placed.append(
            item.model_copy(
                update={"path": final, "info": item.info.model_copy(update={"path": final})}
            )
        )
    return placed


_FULL_PRECISION = frozenset({"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"})


def quantize_model(
    source_gguf: Path,
    output_dir: Path,
    plan: ConversionPlan,
    toolchain: Toolchain,
    env: Mapping[str, str],
    *,
    allow_requantize: bool = False,
    work_root: Path | None = None,
    disk_free: DiskFree | None = None,
    progress: StageCallback = _no_progress,
) -> ConversionResult:
    """Quantize an existing GGUF per ``plan`` (its outtype is ignored): the file plays the
    intermediate (first in the result, left where it is); the quantized files end up in
    ``output_dir``.

    Raises:
        InvalidQuantization: the source is already quantized and ``allow_requantize`` is off.
        ConversionError, ToolFailed: as :func:`convert_model`, with the same cleanup.
    """
    info = read_gguf_info(source_gguf, toolchain)
    source_type = info.file_type_name or "unknown"
    progress("VERIFYING", source_type.removeprefix("MOSTLY_").removeprefix("ALL_"))
    if info.gguf_type != "model":
        raise InvalidQuantization(f"{source_gguf.name} is a GGUF {info.gguf_type}, not a model")
    if source_type not in _FULL_PRECISION and not allow_requantize:
        raise InvalidQuantization(
            f"{source_gguf.name} is already quantized ({source_type}); quantizing it again "
            "loses quality: quantize its F16 version, or allow requantizing",
            field="allow_requantize",
        )
    quantizations = normalise_quantizations(toolchain, plan.quantizations)
    root = work_root or output_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    needed = int(info.size_bytes * _QUANT_RATIO * len(quantizations) * _DISK_MARGIN)
    free = (disk_free or _disk_free)(root)
    if free < needed:
        raise InsufficientDisk(
            f"quantizing {source_gguf.name} needs about {needed / 2**20:.1f} MiB in {root} but "
            f"{free / 2**20:.1f} MiB are free"
        )
    expected = Expectation(
        architecture=info.architecture,
        tensor_count=info.tensor_count,
        chat_template=info.chat_template,
        add_bos_token=info.add_bos_token,
    )
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=root))
    try:
        files = [
            _finish(
                "intermediate",
                source_type.removeprefix("MOSTLY_").removeprefix("ALL_").lower(),
                source_gguf,
                info,
                0.0,
                {},
                plan,
                toolchain,
                env,
                work,
            )
        ]
        files += _quantize_all(
            source_gguf, source_gguf.stem, expected, quantizations, plan, toolchain, env, work,
            progress,
        )  # fmt: skip
        placed = _place(files, work, output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ConversionResult(
        llamacpp_version=toolchain.version,
        architecture=info.architecture,
        add_bos_token=info.add_bos_token,
        files=placed,
    )


def _quantize_all(
    intermediate: Path,
    stem: str,
    expected: Expectation,
    quantizations: Sequence[str],
    plan: ConversionPlan,
    toolchain: Toolchain,
    env: Mapping[str, str],
    work: Path,
    progress: StageCallback,
) -> list[ConvertedFile]:
    """Every quantization of ``intermediate`` (with the importance matrix when asked), each
    verified against ``expected`` and given its quality figure, written in ``work``."""
    files: list[ConvertedFile] = []
    imatrix = plan.imatrix_file
    if imatrix is None and plan.imatrix_text is not None and quantizations:
        progress("COMPUTING_IMATRIX", plan.outtype)
        imatrix = work / "imatrix.gguf"
        compute_imatrix(
            toolchain,
            intermediate,
            plan.imatrix_text,
            imatrix,
            env,
            context_size=plan.imatrix_context,
            chunks=plan.imatrix_chunks,
        )
    for name in quantizations:
        target = work / f"{stem}-{name.lower()}.gguf"
        progress("QUANTIZING", name)
        extra = list(plan.quantize_args.get(name, ()))
        if imatrix is not None:
            extra += ["--imatrix", str(imatrix)]
        run = quantize(toolchain, intermediate, target, name, env, extra)
        fallbacks = fallback_tensors(run.output)
        if fallbacks and not plan.allow_fallback:
            listed = "; ".join(f"{k}: {v}" for k, v in list(fallbacks.items())[:4])
            raise InvalidQuantization(
                f"{name} does not fit {len(fallbacks)} tensor(s) of {stem} ({listed}); "
                "their widths must be multiples of the type's block size. Choose another "
                "type, or allow fallback to accept a file with those tensors in other types",
                field="quantizations",
            )
        progress("VERIFYING", name)
        info = read_gguf_info(target, toolchain)
        file_type = f"MOSTLY_{_QUANT_ALIASES.get(name, name)}"
        verify(info, expected.model_copy(update={"file_type_name": file_type}))
        files.append(
            _finish(
                "quantized", name, target, info, run.wall_s, fallbacks, plan, toolchain, env, work
            )
        )
    return files


def _finish(
    role: Literal["intermediate", "quantized"],
    quantization: str,
    path: Path,
    info: GgufInfo,
    wall_s: float,
    fallbacks: dict[str, str],
    plan: ConversionPlan,
    toolchain: Toolchain,
    env: Mapping[str, str],
    work: Path,
) -> ConvertedFile:
    figure = comparison = None
    if plan.evaluation_text is not None:
        # With KL asked for, the intermediate's logits are kept for every quantized file.
        base_logits = work / "intermediate.logits"
        logits = None
        if plan.kl_divergence:
            logits = base_logits if role == "intermediate" else work / f"{quantization}.logits"
        figure = perplexity(
            toolchain,
            path,
            plan.evaluation_text,
            env,
            context_size=plan.evaluation_context,
            chunks=plan.evaluation_chunks,
            logits_out=logits,
        )
        if logits is not None and role == "quantized":
            comparison = compare_logits(base_logits, logits)
            logits.unlink()
    return ConvertedFile(
        role=role,
        quantization=quantization,
        path=path,
        sha256=sha256_of(path),
        info=info,
        perplexity=figure,
        kl_divergence=comparison.kl_divergence if comparison else None,
        same_top_token=comparison.same_top_token if comparison else None,
        tool_wall_s=wall_s,
        fallback_tensors=fallbacks,
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
