"""One accepted conversion, run from start to end: download from the registry, the tool work in a
worker process, then every output registered as a child version.

Nothing is registered until every output is verified; if registering one fails, the versions
already registered by this run are deleted again. The work directory is removed however the run
ends (success, failure, cancellation). A worker (or a tool it started) killed by a signal, which
is the OOM killer or a preempted node rather than the input, is run again on the inputs already
downloaded, up to ``WORKER_ATTEMPTS`` runs, each retry an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from google.protobuf import duration_pb2
from pydantic import ValidationError

from forgeline_converter.core import ConversionPlan
from forgeline_converter.gguf_info import GgufInfo
from forgeline_converter.llamacpp_tools import OutType
from forgeline_converter.modelfile import ModelfileParameter
from forgeline_converter.settings import ConverterSettings
from forgeline_converter.worker import (
    AdapterJob,
    ModelfileSpec,
    ModelJob,
    SmokeSpec,
    WorkerJob,
    WorkerMessage,
    WorkerOutput,
    WorkerResult,
)
from forgeline_kit.errors import DeadlineExceeded, ForgelineError, Unavailable
from forgeline_kit.subprocesses import die_with_parent
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2 as pb
from forgeline_proto.registry.v1 import registry_pb2 as rpb
from forgeline_registry.client import RegistryClient

__all__ = ["OperationFailed", "Reporter", "RunContext", "WorkerPool", "run_conversion"]

log = logging.getLogger(__name__)

_OUTTYPES: dict[int, OutType] = {
    pb.GGUF_OUTTYPE_F32: "f32",
    pb.GGUF_OUTTYPE_F16: "f16",
    pb.GGUF_OUTTYPE_BF16: "bf16",
    pb.GGUF_OUTTYPE_Q8_0: "q8_0",
}
_STAGES = {
    "CONVERTING": pb.CONVERSION_STATE_CONVERTING,
    "COMPUTING_IMATRIX": pb.CONVERSION_STATE_COMPUTING_IMATRIX,
    "QUANTIZING": pb.CONVERSION_STATE_QUANTIZING,
    "VERIFYING": pb.CONVERSION_STATE_VERIFYING,
}
_WORKER_STOP_GRACE_S = 5.0
#: Failures of the tool work that are not the input's: run it again.
_KILLED = frozenset({"worker_killed", "tool_killed"})
#: What ``_download`` puts in the work directory: kept when the tool work runs again.
_INPUTS = frozenset(
    {"source", "adapter", "base", "base-gguf", "evaluation", "imatrix", "calibration.txt"}
)
# Room needed beyond the source's own size while downloading it.
_DISK_MARGIN = 1.10


class OperationFailed(Exception):  # noqa: N818 (an OperationError of converter.proto)
    """The conversion ends FAILED with this OperationError."""

    def __init__(self, code: str, message: str, *, field: str = "", retryable: bool = False):
        super().__init__(message)
        self.error = common_pb2.OperationError(
            code=code, message=message, field=field, retryable=retryable
        )


class Reporter:
    """Where a run reports; the service records each call as an event."""

    def progress(
        self,
        stage: pb.ConversionState.ValueType,
        percent: float,
        *,
        target: str = "",
        bytes_done: int = 0,
        bytes_total: int = 0,
    ) -> None:
        """The run entered ``stage`` (or moved on within it)."""

    def log(self, text: str, source: common_pb2.LogSource.ValueType) -> None:
        """A log line of the service or of the worker."""

    def retry(self, retry: common_pb2.Retry) -> None:
        """The tool work failed for a reason not the input's and runs again."""


@dataclass
class RunContext:
    """What every run shares."""

    settings: ConverterSettings
    registry: RegistryClient
    llamacpp_version: str
    workers: WorkerPool


def builtin_evaluation_text() -> Path:
    """The held-out text used when a request names none."""
    return Path(str(files("forgeline_kit.tinymodel.data").joinpath("pretrain.txt")))


class _Steps:
    """Overall percent from the number of steps done out of those expected."""

    def __init__(self, spec: pb.ConversionSpec, reporter: Reporter) -> None:
        if spec.HasField("adapter"):
            total = 4  # download, convert, verify, register
        else:
            count = len(spec.model.quantizations)
            outputs = count + (1 if spec.model.register_outtype or count == 0 else 0)
            imatrix = 1 if spec.model.HasField("imatrix") and count else 0
            total = 3 + imatrix + 2 * count + outputs + 1
        self.total = total
        self.done = 0
        self.reporter = reporter

    def enter(self, stage: pb.ConversionState.ValueType, target: str = "", **sizes: int) -> None:
        percent = min(99.0, 100.0 * self.done / self.total)
        self.done += 1
        self.reporter.progress(stage, round(percent, 1), target=target, **sizes)


def _registry_failure(error: ForgelineError, doing: str) -> OperationFailed:
    if isinstance(error, Unavailable | DeadlineExceeded):
        return OperationFailed(
            "registry_unavailable",
            f"the registry could not be reached while {doing}: {error.message}; the conversion "
            "can be retried once it is back",
            retryable=True,
        )
    return OperationFailed("internal", f"the registry refused {doing}: {error.message}")


def _check_free(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if free < needed * _DISK_MARGIN:
        raise OperationFailed(
            "insufficient_disk",
            f"downloading needs about {needed * _DISK_MARGIN / 2**20:.1f} MiB in {where} but "
            f"{free / 2**20:.1f} MiB are free; free space or set FORGELINE_CONVERTER_WORK_DIR "
            "to a larger disk",
        )


async def _pull(
    context: RunContext, ref: common_pb2.VersionRef, target: Path, paths: tuple[str, ...] = ()
) -> rpb.Version:
    reference = f"{ref.model}:{ref.version}"
    try:
        return await context.registry.pull(reference, target, paths=paths)
    except ForgelineError as error:
        raise _registry_failure(error, f"downloading {reference}") from error
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise OperationFailed(
                "insufficient_disk", f"the disk filled up while downloading {reference}"
            ) from error
        raise


async def _download(
    conversion: pb.Conversion, context: RunContext, work: Path, steps: _Steps
) -> tuple[WorkerJob, str]:
    """Fetch every input; the worker job and the SHA-256 of the evaluation text ("" if none)."""
    spec = conversion.spec
    registry = context.registry
    refs = (
        [spec.adapter.adapter, spec.adapter.base]
        + ([spec.adapter.base_gguf] if spec.adapter.HasField("base_gguf") else [])
        if spec.HasField("adapter")
        else [spec.model.source]
    )
    sizes = []
    for ref in refs:
        try:
            version = await registry.stub.GetVersion(
                rpb.GetVersionRequest(
                    model=ref.model, version=ref.version, view=rpb.VERSION_VIEW_BASIC
                )
            )
        except ForgelineError as error:
            raise _registry_failure(error, f"looking up {ref.model}:{ref.version}") from error
        sizes.append(version.size_bytes)
    steps.enter(pb.CONVERSION_STATE_DOWNLOADING, bytes_total=sum(sizes))
    _check_free(work, sum(sizes) * 3)  # the source, then the GGUF files made from it
    smoke = SmokeSpec(
        skip=spec.verification.skip_smoke_test,
        prompt=spec.verification.smoke_prompt or SmokeSpec().prompt,
    )
    common = {
        "output_dir": work / "outputs",
        "work_root": work,
        "result_file": work / "result.json",
        "llamacpp_home": context.settings.llamacpp_home,
        "smoke": smoke,
        "trust_remote_code": context.settings.trust_remote_code,
    }
    if spec.HasField("adapter"):
        task = spec.adapter
        await _pull(context, task.adapter, work / "adapter")
        await _pull(context, task.base, work / "base")
        base_gguf = None
        if task.HasField("base_gguf"):
            version = await _pull(context, task.base_gguf, work / "base-gguf")
            ggufs = [a.path for a in version.artifacts if a.path.endswith(".gguf")]
            base_gguf = work / "base-gguf" / ggufs[0] if ggufs else None
        adapter_job = AdapterJob(
            adapter_dir=work / "adapter",
            base_dir=work / "base",
            outtype=_OUTTYPES[task.outtype],
            base_gguf=base_gguf,
        )
        return WorkerJob(task=adapter_job, **common), ""
    model = spec.model
    source = await _pull(context, model.source, work / "source")
    ggufs = [a.path for a in source.artifacts if a.path.endswith(".gguf")]
    source_gguf = work / "source" / ggufs[0] if source.kind == rpb.VERSION_KIND_GGUF else None
    evaluation: Path | None = None
    kl_divergence = spec.verification.quality_metric == pb.QUALITY_METRIC_KL_DIVERGENCE
    if kl_divergence or spec.verification.quality_metric == pb.QUALITY_METRIC_PERPLEXITY:
        if spec.verification.HasField("evaluation_text"):
            text_ref = spec.verification.evaluation_text
            await _pull(context, text_ref.version, work / "evaluation", (text_ref.path,))
            evaluation = work / "evaluation" / text_ref.path
        else:
            evaluation = builtin_evaluation_text()
    imatrix_text: Path | None = None
    imatrix_file: Path | None = None
    if model.HasField("imatrix"):
        which = model.imatrix.WhichOneof("source")
        if which == "calibration_text_inline":
            imatrix_text = work / "calibration.txt"
            imatrix_text.write_text(model.imatrix.calibration_text_inline, encoding="utf-8")
        elif which in ("imatrix", "calibration_text"):
            matrix = model.imatrix
            artifact = matrix.imatrix if which == "imatrix" else matrix.calibration_text
            await _pull(context, artifact.version, work / "imatrix", (artifact.path,))
            if which == "imatrix":
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
        outtype=_OUTTYPES[model.outtype],
        quantizations=[t.type for t in model.quantizations],
        evaluation_text=evaluation,
        kl_divergence=kl_divergence,
        evaluation_context=context.settings.evaluation_context,
        evaluation_chunks=spec.verification.evaluation_chunks,
        quantize_args=quantize_args,
        imatrix_text=imatrix_text,
        imatrix_file=imatrix_file,
        imatrix_chunks=model.imatrix.chunks,
        imatrix_context=model.imatrix.context_size or 512,
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
    return WorkerJob(task=job, **common), digest


async def _stop_worker(process: asyncio.subprocess.Process) -> None:
    """Stop the worker and every tool it started (they share its process group)."""
    if process.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, _WORKER_STOP_GRACE_S), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue


class WorkerPool:
    """Starts worker processes, keeping one spare that has already imported and loaded what a
    job needs (about a second of CPU), so a conversion's tools start as soon as its inputs are
    downloaded."""

    def __init__(self, llamacpp_home: Path | None) -> None:
        self._home = llamacpp_home
        self._spare: asyncio.subprocess.Process | None = None

    async def _spawn(self) -> asyncio.subprocess.Process:
        home = [str(self._home.absolute())] if self._home is not None else []
        return await asyncio.create_subprocess_exec(
            *die_with_parent(
                [sys.executable, "-m", "forgeline_converter.worker", "--stdin", *home]
            ),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: one signal stops it and its tools
        )

    async def warm(self) -> None:
        """Have a spare worker waiting."""
        if self._spare is None or self._spare.returncode is not None:
            self._spare = await self._spawn()

    async def run(self, job_file: Path) -> asyncio.subprocess.Process:
        """A worker working on ``job_file`` (the spare when there is one); a new spare is
        started behind it."""
        process, self._spare = self._spare, None
        if process is None or process.returncode is not None:
            process = await self._spawn()
        try:
            await self._hand(process, job_file)
        except (BrokenPipeError, ConnectionResetError):
            # The spare died while waiting (killed from outside): use a fresh one.
            await _stop_worker(process)
            process = await self._spawn()
            await self._hand(process, job_file)
        await self.warm()
        return process

    @staticmethod
    async def _hand(process: asyncio.subprocess.Process, job_file: Path) -> None:
        assert process.stdin is not None
        process.stdin.write(f"{job_file}\n".encode())
        await process.stdin.drain()
        process.stdin.close()

    async def close(self) -> None:
        """Stop the spare."""
        if self._spare is not None:
            await _stop_worker(self._spare)
            self._spare = None


async def _run_worker(
    job: WorkerJob,
    work: Path,
    steps: _Steps,
    reporter: Reporter,
    pool: WorkerPool,
    deadline_s: float,
) -> WorkerResult:
    job_file = work / "job.json"
    job_file.write_text(job.model_dump_json(), encoding="utf-8")
    process = await pool.run(job_file)
    try:
        async with asyncio.timeout(deadline_s):
            failure, tail, code = await _follow_worker(process, steps, reporter)
    except TimeoutError:
        raise OperationFailed(
            "deadline_exceeded",
            f"the conversion's tool work ran past its time limit of {deadline_s:g} s and was "
            "stopped; raise FORGELINE_CONVERTER_MAX_TOOL_SECONDS for models this large",
        ) from None
    finally:
        await _stop_worker(process)
    if failure is not None:
        raise OperationFailed(
            failure.code, failure.text, field=failure.field, retryable=failure.code in _KILLED
        )
    if code < 0:
        raise OperationFailed(
            "worker_killed", f"the conversion worker was killed by signal {-code}", retryable=True
        )
    if code != 0:
        raise OperationFailed(
            "internal", f"the conversion worker exited with {code}: " + "\n".join(tail[-10:])
        )
    return WorkerResult.model_validate_json(job.result_file.read_text(encoding="utf-8"))


async def _follow_worker(
    process: asyncio.subprocess.Process, steps: _Steps, reporter: Reporter
) -> tuple[WorkerMessage | None, list[str], int]:
    """Relay a worker's messages until it exits: its failure message (if any), the last lines it
    wrote that were not messages, and its exit status."""
    failure: WorkerMessage | None = None
    tail: list[str] = []
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        try:
            message = WorkerMessage.model_validate_json(line)
        except ValidationError:
            tail = [*tail[-20:], line]
            reporter.log(line, common_pb2.LOG_SOURCE_STDERR)
            continue
        if message.type == "stage" and message.stage is not None:
            steps.enter(_STAGES[message.stage], message.target)
        elif message.type == "log":
            reporter.log(message.text, common_pb2.LOG_SOURCE_STDOUT)
        else:
            failure = message
    code = await process.wait()
    return failure, tail, code


async def _run_worker_retrying(
    job: WorkerJob, work: Path, steps: _Steps, reporter: Reporter, context: RunContext
) -> WorkerResult:
    """The tool work, run again while its worker or a tool is killed by a signal, up to
    ``WORKER_ATTEMPTS`` runs in all; the inputs stay, what a killed run wrote is removed."""
    settings = context.settings
    attempts = settings.worker_attempts
    attempt = 1
    done = steps.done
    while True:
        try:
            return await _run_worker(
                job, work, steps, reporter, context.workers, settings.max_tool_seconds
            )
        except OperationFailed as failure:
            error = failure.error
            if error.code not in _KILLED:
                raise
            if attempt >= attempts:
                if attempts > 1:
                    error.message += f" ({attempts} attempts, each killed)"
                raise
            delay = settings.worker_retry_seconds * 2 ** (attempt - 1)
            attempt += 1
            reason = error.message.splitlines()[0] if error.message else error.code
            log.warning(
                "%s; running the tool work again (attempt %d of %d) in %g s",
                reason,
                attempt,
                attempts,
                delay,
            )
            reporter.retry(
                common_pb2.Retry(
                    error=common_pb2.OperationError(
                        code=error.code, message=reason, retryable=True
                    ),
                    attempt=attempt,
                    max_attempts=attempts,
                    delay=_duration(delay),
                )
            )
            await asyncio.to_thread(_clear_worker_files, work)
            steps.done = done
            await asyncio.sleep(delay)


def _clear_worker_files(work: Path) -> None:
    """Remove what a killed worker left in ``work``, keeping the downloaded inputs."""
    for entry in work.iterdir():
        if entry.name in _INPUTS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _file_type_name(info: GgufInfo, fallback: str) -> str:
    name = info.file_type_name or ""
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name or fallback


def _metadata(info: GgufInfo, fallback: str) -> pb.GgufMetadata:
    return pb.GgufMetadata(
        architecture=info.architecture,
        tensor_count=info.tensor_count,
        context_length=info.context_length or 0,
        file_type=_file_type_name(info, fallback),
        has_chat_template=info.chat_template is not None,
        parameter_count=info.parameter_count,
    )


def _lineage(conversion: pb.Conversion, output: WorkerOutput, llamacpp_version: str) -> rpb.Lineage:
    spec = conversion.spec
    parents: list[rpb.Parent] = []
    if spec.HasField("adapter"):
        parents.append(
            rpb.Parent(version=spec.adapter.adapter, relation=rpb.RELATION_CONVERTED_FROM)
        )
        if spec.adapter.HasField("base_gguf"):
            parents.append(
                rpb.Parent(version=spec.adapter.base_gguf, relation=rpb.RELATION_ADAPTER_OF)
            )
    else:
        parents.append(rpb.Parent(version=spec.model.source, relation=rpb.RELATION_CONVERTED_FROM))
        imatrix = spec.model.imatrix
        which = imatrix.WhichOneof("source") if spec.model.HasField("imatrix") else None
        if which in ("imatrix", "calibration_text") and not output.adapter:
            ref = imatrix.imatrix if which == "imatrix" else imatrix.calibration_text
            parents.append(rpb.Parent(version=ref.version, relation=rpb.RELATION_CALIBRATED_WITH))
    metrics: dict[str, float] = {"size_bytes": float(output.size_bytes)}
    if output.perplexity is not None:
        metrics["perplexity"] = output.perplexity
    if output.reference_perplexity is not None:
        metrics["perplexity_reference"] = output.reference_perplexity
    if output.kl_divergence is not None:
        metrics["kl_divergence_mean"] = output.kl_divergence
    return rpb.Lineage(
        parents=parents,
        chat_template=output.info.chat_template or "",
        metrics=metrics,
        tool_versions={"llama.cpp": llamacpp_version},
        produced_by=f"converter/conversions/{conversion.id}",
    )


async def _push(
    registry: RegistryClient, output: WorkerOutput, begin_request: rpb.BeginVersionRequest
) -> rpb.Version:
    """Push ``output.directory`` as a version, its GGUF artifact carrying its file type (the
    registry guesses file types from file names, and ``model.gguf`` names none)."""
    plan, _ = await registry.plan(output.directory)
    for artifact in plan.artifacts:
        if artifact.path.endswith(".gguf"):
            artifact.gguf_file_type = output.file_type
    begin_request.artifacts.extend(plan.artifacts)
    begin = await registry.stub.BeginVersion(begin_request)
    if begin.HasField("committed_version"):
        return begin.committed_version
    multipart = await registry.upload(begin, plan)
    return await registry.stub.CommitVersion(
        rpb.CommitVersionRequest(upload_id=begin.upload_id, multipart_uploads=multipart)
    )


async def _register(
    conversion: pb.Conversion,
    context: RunContext,
    result: WorkerResult,
    steps: _Steps,
    evaluation_sha256: str,
) -> list[pb.ConvertedOutput]:
    spec = conversion.spec
    steps.enter(
        pb.CONVERSION_STATE_REGISTERING,
        bytes_total=sum(output.size_bytes for output in result.outputs),
    )
    source = spec.adapter.adapter if spec.HasField("adapter") else spec.model.source
    registered: list[pb.ConvertedOutput] = []
    try:
        for output in result.outputs:
            labels = dict(spec.output.labels)
            labels |= {"quantization": output.file_type.lower(), "file_type": output.file_type}
            description = spec.output.description or (
                f"{source.model}:{source.version} as GGUF {output.file_type}"
                f"{' adapter' if output.adapter else ''} (llama.cpp {result.llamacpp_version})"
            )
            version = await _push(
                context.registry,
                output,
                rpb.BeginVersionRequest(
                    model=spec.output.model,
                    create_model=True,
                    kind=rpb.VERSION_KIND_GGUF_ADAPTER if output.adapter else rpb.VERSION_KIND_GGUF,
                    lineage=_lineage(conversion, output, result.llamacpp_version),
                    labels=labels,
                    description=description,
                    request_id=f"{conversion.id}/{output.file_type}",
                    transfer=context.registry.transfer_options,
                ),
            )
            quality = None
            if output.kl_divergence is not None:
                quality = pb.QualityFigure(
                    metric=pb.QUALITY_METRIC_KL_DIVERGENCE,
                    value=output.kl_divergence,
                    evaluation_text_sha256=evaluation_sha256,
                    chunks=spec.verification.evaluation_chunks,
                )
            elif output.perplexity is not None and output.reference_perplexity is not None:
                quality = pb.QualityFigure(
                    metric=pb.QUALITY_METRIC_PERPLEXITY,
                    value=output.perplexity,
                    reference_value=output.reference_perplexity,
                    evaluation_text_sha256=evaluation_sha256,
                    chunks=spec.verification.evaluation_chunks,
                )
            registered.append(
                pb.ConvertedOutput(
                    version=common_pb2.VersionRef(model=version.model, version=version.number),
                    adapter=output.adapter,
                    file_type=output.file_type,
                    size_bytes=output.size_bytes,
                    sha256=output.sha256,
                    quality=quality,
                    metadata=_metadata(output.info, output.file_type),
                )
            )
    except BaseException as error:
        await _unregister(context, registered)
        if isinstance(error, ForgelineError):
            raise _registry_failure(error, "registering the outputs") from error
        raise
    return registered


async def _unregister(context: RunContext, registered: list[pb.ConvertedOutput]) -> None:
    """Delete what this run registered before it failed (best effort: the registry may be the
    reason it failed)."""
    for output in registered:
        ref = output.version
        try:
            await context.registry.stub.DeleteVersion(
                rpb.DeleteVersionRequest(model=ref.model, version=ref.version, force=True)
            )
        except ForgelineError as error:
            log.warning("could not delete %s:%s after a failure: %s", ref.model, ref.version, error)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


async def run_conversion(
    conversion: pb.Conversion, context: RunContext, reporter: Reporter
) -> pb.ConversionResult:
    """Run ``conversion`` to its result.

    Raises:
        OperationFailed: it failed; nothing of it is registered.
        asyncio.CancelledError: it was cancelled; the worker is stopped, nothing registered.
    """
    work = context.settings.work_dir.absolute() / conversion.id
    shutil.rmtree(work, ignore_errors=True)  # a run before a restart may have left files
    work.mkdir(parents=True)
    steps = _Steps(conversion.spec, reporter)
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        job, evaluation_sha256 = await _download(conversion, context, work, steps)
        timings["download"] = time.monotonic() - started
        started = time.monotonic()
        result = await _run_worker_retrying(job, work, steps, reporter, context)
        timings["worker"] = time.monotonic() - started
        timings |= result.timings
        started = time.monotonic()
        outputs = await _register(conversion, context, result, steps, evaluation_sha256)
        timings["register"] = time.monotonic() - started
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return pb.ConversionResult(
        outputs=outputs,
        llama_cpp_version=result.llamacpp_version,
        timings={name: _duration(seconds) for name, seconds in timings.items()},
    )
