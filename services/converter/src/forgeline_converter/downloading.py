"""DOWNLOADING: every input of a conversion pulled from the registry into its work directory
(free disk checked first), and the job the worker runs on them made from the conversion's spec.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
from importlib.resources import files
from pathlib import Path

from forgeline_converter.conversions import (
    AdapterConversion,
    Conversion,
    ConversionState,
    GgufOuttype,
    ModelConversion,
    QualityMetric,
    VerificationOptions,
    VersionRef,
)
from forgeline_converter.gguf_conversion import ConversionPlan
from forgeline_converter.llamacpp.tools import OutType
from forgeline_converter.modelfile import ModelfileParameter
from forgeline_converter.registry_access import RegistryVersion, VersionKind
from forgeline_converter.run_context import RunContext, Steps, registry_failure
from forgeline_converter.worker_process import (
    AdapterJob,
    ModelfileSpec,
    ModelJob,
    SmokeSpec,
    WorkerJob,
)
from forgeline_kit.errors import ForgelineError
from forgeline_kit.operations import OperationFailure

__all__ = ["INPUTS", "builtin_evaluation_text", "download_inputs"]

_OUTTYPES: dict[GgufOuttype, OutType] = {
    GgufOuttype.F32: "f32",
    GgufOuttype.F16: "f16",
    GgufOuttype.BF16: "bf16",
    GgufOuttype.Q8_0: "q8_0",
}
#: What `download_inputs` puts in the work directory: kept when the tool work runs again.
INPUTS = frozenset(
    {"source", "adapter", "base", "base-gguf", "evaluation", "imatrix", "calibration.txt"}
)
# Room needed beyond the source's own size while downloading it.
_DISK_MARGIN = 1.10


def builtin_evaluation_text() -> Path:
    """The held-out text used when a request names none."""
    return Path(str(files("forgeline_kit.tinymodel.data").joinpath("pretrain.txt")))


def _check_free(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if free < needed * _DISK_MARGIN:
        raise OperationFailure(
            "insufficient_disk",
            f"downloading needs about {needed * _DISK_MARGIN / 2**20:.1f} MiB in {where} but "
            f"{free / 2**20:.1f} MiB are free; free space or set FORGELINE_CONVERTER_WORK_DIR "
            "to a larger disk",
        )


def _outtype(outtype: GgufOuttype | None) -> OutType:
    # The validation fills it in; unset means F16 in the contract too.
    return _OUTTYPES[outtype or GgufOuttype.F16]


async def _pull(
    context: RunContext, ref: VersionRef, target: Path, paths: tuple[str, ...] = ()
) -> RegistryVersion:
    reference = f"{ref.model}:{ref.version}"
    try:
        return await context.registry.pull(reference, target, paths)
    except ForgelineError as error:
        raise registry_failure(error, f"downloading {reference}") from error
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OperationFailure(
                "insufficient_disk", f"the disk filled up while downloading {reference}"
            ) from error
        raise


async def download_inputs(
    conversion: Conversion, context: RunContext, work: Path, steps: Steps
) -> tuple[WorkerJob, str]:
    """Fetch every input; the worker job and the SHA-256 of the evaluation text ("" if none)."""
    spec = conversion.spec
    task = spec.task
    if isinstance(task, AdapterConversion):
        refs = [task.adapter, task.base, task.base_gguf]
    elif isinstance(task, ModelConversion):
        refs = [task.source]
    else:  # the validation refuses a spec without a task
        raise OperationFailure("internal", f"conversion {conversion.id} names nothing to convert")
    sizes = []
    for ref in filter(None, refs):
        try:
            version = await context.registry.get_version(ref)
        except ForgelineError as error:
            raise registry_failure(error, f"looking up {ref.model}:{ref.version}") from error
        sizes.append(version.size_bytes)
    steps.enter(ConversionState.DOWNLOADING, bytes_total=sum(sizes))
    _check_free(work, sum(sizes) * 3)  # the source, then the GGUF files made from it
    verification = spec.verification
    smoke = SmokeSpec(
        skip=verification.skip_smoke_test,
        prompt=verification.smoke_prompt or SmokeSpec().prompt,
    )
    common = {
        "output_dir": work / "outputs",
        "work_root": work,
        "result_file": work / "result.json",
        "llamacpp_home": context.settings.llamacpp_home,
        "smoke": smoke,
        "trust_remote_code": context.settings.trust_remote_code,
    }
    if isinstance(task, AdapterConversion):
        return WorkerJob(task=await _adapter_job(context, task, work), **common), ""
    job, digest = await _model_job(context, task, verification, work)
    return WorkerJob(task=job, **common), digest


async def _adapter_job(context: RunContext, task: AdapterConversion, work: Path) -> AdapterJob:
    if task.base is None:  # the validation names it, from the adapter's lineage if need be
        raise OperationFailure("internal", "the adapter's base model was never resolved")
    await _pull(context, task.adapter, work / "adapter")
    await _pull(context, task.base, work / "base")
    base_gguf = None
    if task.base_gguf is not None:
        version = await _pull(context, task.base_gguf, work / "base-gguf")
        ggufs = [a.path for a in version.artifacts if a.path.endswith(".gguf")]
        base_gguf = work / "base-gguf" / ggufs[0] if ggufs else None
    return AdapterJob(
        adapter_dir=work / "adapter",
        base_dir=work / "base",
        outtype=_outtype(task.outtype),
        base_gguf=base_gguf,
    )


async def _model_job(
    context: RunContext, model: ModelConversion, verification: VerificationOptions, work: Path
) -> tuple[ModelJob, str]:
    source = await _pull(context, model.source, work / "source")
    ggufs = [a.path for a in source.artifacts if a.path.endswith(".gguf")]
    source_gguf = work / "source" / ggufs[0] if source.kind == VersionKind.GGUF else None
    evaluation: Path | None = None
    kl_divergence = verification.quality_metric == QualityMetric.KL_DIVERGENCE
    if kl_divergence or verification.quality_metric == QualityMetric.PERPLEXITY:
        if verification.evaluation_text is not None:
            text_ref = verification.evaluation_text
            await _pull(context, text_ref.version, work / "evaluation", (text_ref.path,))
            evaluation = work / "evaluation" / text_ref.path
        else:
            evaluation = builtin_evaluation_text()
    imatrix_text: Path | None = None
    imatrix_file: Path | None = None
    imatrix = model.imatrix
    if imatrix is not None:
        if imatrix.calibration_text_inline is not None:
            imatrix_text = work / "calibration.txt"
            imatrix_text.write_text(imatrix.calibration_text_inline, encoding="utf-8")
        elif (artifact := imatrix.registry_file) is not None:
            await _pull(context, artifact.version, work / "imatrix", (artifact.path,))
            if imatrix.imatrix is not None:
                imatrix_file = work / "imatrix" / artifact.path
            else:
                imatrix_text = work / "imatrix" / artifact.path
    quantize_args: dict[str, list[str]] = {}
    for target in model.quantizations:
        args: list[str] = []
        if target.output_tensor_type:
            args += ["--output-tensor-type", target.output_tensor_type]
        if target.token_embedding_type:
            args += ["--token-embedding-type", target.token_embedding_type]
        if target.leave_output_tensor:
            args.append("--leave-output-tensor")
        if target.pure:
            args.append("--pure")
        for override in target.tensor_types:
            args += ["--tensor-type", f"{override.pattern}={override.type}"]
        if model.allow_requantize:
            args.append("--allow-requantize")
        quantize_args[target.type] = args
    plan = ConversionPlan(
        outtype=_outtype(model.outtype),
        quantizations=[t.type for t in model.quantizations],
        evaluation_text=evaluation,
        kl_divergence=kl_divergence,
        evaluation_context=context.settings.evaluation_context,
        evaluation_chunks=verification.evaluation_chunks,
        quantize_args=quantize_args,
        imatrix_text=imatrix_text,
        imatrix_file=imatrix_file,
        imatrix_chunks=imatrix.chunks if imatrix else 0,
        imatrix_context=(imatrix.context_size if imatrix else 0) or 512,
    )
    options = model.modelfile
    modelfile = ModelfileSpec(
        skip=options.skip,
        system=options.system,
        parameters=[ModelfileParameter(name=p.name, value=p.value) for p in options.parameters],
        template_override=options.template_override,
    )
    job = ModelJob(
        source_dir=work / "source",
        plan=plan,
        register_outtype=model.register_outtype,
        modelfile=modelfile,
        source_gguf=source_gguf,
        allow_requantize=model.allow_requantize,
    )
    digest = ""
    if evaluation is not None:
        digest = hashlib.sha256(evaluation.read_bytes()).hexdigest()
    return job, digest
