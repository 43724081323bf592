"""The fine-tuning pipeline: an OpenAI fine-tuning job carried from uploaded data to a served model.

    validating_files -> training (trainer: validate, train, merge, register adapter + merged)
    -> converting (converter: merged -> GGUF f16 + quantizations; adapter -> GGUF adapter)
    -> deploying (a llama.cpp deployment named after the job's `fine_tuned_model`) -> succeeded

The gateway owns the pipeline and persists it (`JobStore`) after every step, so it survives a
restart of any service: each stage's remote work is keyed by the job id (the trainer's and the
converter's `request_id`, the deployment's name), so redoing a stage after a restart re-attaches
to the work already done instead of repeating it.

Failures that are not the user's do not cost the training. A killed LLaMA-Factory run or
conversion worker is run again by the trainer or converter (they hold the checkpoints and
inputs); their retries are mirrored as events. A service that cannot be reached, or does not
answer in time, makes the pipeline run the stage again, a bounded number of times with backoff
(`attempts`, `retry_seconds`), then the job fails. A failed job keeps what it registered
(labelled ``fine_tuning_job_status=failed``) and can be retried from the stage that failed
(`retry`); a cancelled job leaves nothing behind: what it registered is deleted and what it
deployed is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol

import grpc
from google.protobuf import field_mask_pb2

from forgeline_gateway.api.fine_tuning.protocol import EvalOptions, FineTuningJobCreate, JobError
from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import LlamaCppSpec, ModelMetadata, OllamaSpec, VllmSpec
from forgeline_gateway.fine_tuning.agreement import PROMPTS, Agreement, Messages, compare
from forgeline_gateway.fine_tuning.auto import ResolvedHyperparameters, resolve
from forgeline_gateway.fine_tuning.plan import DatasetFile, trainer_spec
from forgeline_gateway.fine_tuning.quality import (
    QualityCheck,
    adapter_verdict,
    check_requirement,
    quality_labels,
)
from forgeline_gateway.fine_tuning.records import (
    TERMINAL,
    ArtifactQuality,
    JobRecord,
    Outputs,
    Stage,
)
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    ForgelineError,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_from_rpc_error,
)
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from forgeline_registry.hub import HubImporter, is_hub_id

#: The deployments a job makes: its GGUF files, and its adapter on a base of any of the three
#: backends (the GGUF adapter on llama.cpp or Ollama, the HF/PEFT adapter on vLLM).
JobSpec = LlamaCppSpec | OllamaSpec | VllmSpec

__all__ = [
    "AdapterCheck",
    "DatasetFiles",
    "Pipeline",
    "StageFailedError",
    "fine_tuned_model_name",
]

log = logging.getLogger(__name__)

#: Longest wait for a service while a user waits on the HTTP answer (creating a job).
_INTERACTIVE_TIMEOUT = 30.0
#: Longest wait between two runs of a stage whose service could not be reached.
_MAX_RETRY_SECONDS = 60.0
#: The label put on what a failed job registered (removed when a retry succeeds).
FAILED_LABEL = "fine_tuning_job_status"
_OWNER = re.compile(r"[^A-Za-z0-9_-]+")


class DatasetFiles(Protocol):
    """Resolves uploaded file ids to datasets in the registry (the Files API owns them)."""

    async def dataset_file(self, file_id: str, param: str) -> DatasetFile:
        """The dataset of `file_id`; a `ForgelineError` naming `param` when there is none."""
        ...


class AdapterCheck(Protocol):
    """What the check of an adapter against its merged model reads and asks
    (`fine_tuning/answers.py`)."""

    async def prompts(self, file_id: str, limit: int) -> list[Messages]:
        """Up to `limit` distinct prompts of the uploaded file `file_id`."""
        ...

    async def answer(self, model: str, messages: Messages) -> str:
        """The deployment `model`'s greedy answer to `messages`."""
        ...


class StageFailedError(Exception):
    """A stage ended the job: `error` is what the user sees."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


def fine_tuned_model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's form, ``ft:<base>:<owner>:<suffix>:<id>`` (the suffix may be empty)."""
    owner = _OWNER.sub("-", owner).strip("-") or "forgeline"
    return f"ft:{base}:{owner}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def _ref_text(ref: common_pb2.VersionRef) -> str:
    return f"{ref.model}:{ref.version}"


def _ref(text: str) -> common_pb2.VersionRef:
    model, _, number = text.rpartition(":")
    return common_pb2.VersionRef(model=model, version=int(number))


def _error(error: common_pb2.OperationError, fallback: str) -> JobError:
    return JobError(
        code=error.code or fallback,
        message=error.message or f"the job failed ({fallback})",
        param=error.field or None,
    )


class Pipeline:
    """Creates, drives, resumes and cancels fine-tuning jobs."""

    def __init__(
        self,
        store: JobStore,
        *,
        trainer: trainer_pb2_grpc.TrainerServiceAsyncStub,
        converter: converter_pb2_grpc.ConverterServiceAsyncStub,
        registry: registry_pb2_grpc.RegistryServiceAsyncStub,
        files: DatasetFiles,
        deployments: DeploymentManager,
        organization: str,
        hub: HubImporter | None = None,
        attempts: int = 10,
        retry_seconds: float = 2.0,
        adapter_check: AdapterCheck | None = None,
        quality: QualityCheck | None = None,
    ) -> None:
        """
        Args:
            adapter_check: prompts and answers for checking an adapter against its merged
                model; without it every job is served merged.
            quality: the Evals API runs a job's evaluation on; without it no job is evaluated
                (and `deploy.require` cannot be met).
        """
        self.store = store
        self.trainer = trainer
        self.converter = converter
        self.registry = registry
        self.files = files
        self.deployments = deployments
        self.organization = organization
        self.hub = hub
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self.adapter_check = adapter_check
        self.quality = quality
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._conversions: dict[str, str] = {}
        self._retrying = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every job that had not finished when the gateway last stopped."""
        for job in await self.store.run(self.store.unfinished):
            log.info("resuming fine-tuning job", extra={"job": job.id, "stage": job.stage})
            self._spawn(job.id)

    async def close(self) -> None:
        """Stop driving jobs (they go on at the next start; remote work keeps running)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- API ---------------------------------------------------------------------------------

    async def create(self, request: FineTuningJobCreate, owner: str) -> JobRecord:
        """Check `request` as far as can be done at once, store the job and start it.

        Raises:
            InvalidArgument, NotFound: the request cannot run; the message says how to fix it.
            Unavailable: a service the check needs is down.
        """
        job_id = f"ftjob-{secrets.token_hex(12)}"
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        training = await self.files.dataset_file(request.training_file, "training_file")
        validation = (
            await self.files.dataset_file(request.validation_file, "validation_file")
            if request.validation_file
            else None
        )
        base = await self._base_version(request.model)
        base_ref = common_pb2.VersionRef(model=base.model, version=base.number)
        template = base.lineage.template or None
        hyperparameters = _resolve(request, training, base)
        spec = self._spec(
            request, job_id, seed, base_ref, template, hyperparameters, training, validation
        )
        # The trainer checks every argument against LLaMA-Factory's own dataclasses and the
        # stage/type/device combination; its refusal is the user's 400.
        await self.trainer.SubmitJob(
            trainer_pb2.SubmitJobRequest(spec=spec, validate_only=True),
            timeout=_INTERACTIVE_TIMEOUT,
        )
        job = JobRecord(
            id=job_id,
            created_at=int(time.time()),
            owner=owner,
            request=request,
            fine_tuned_model=fine_tuned_model_name(
                base.model if is_hub_id(request.model) else request.model,
                owner,
                request.suffix,
                job_id,
            ),
            seed=seed,
            base_version=_ref_text(base_ref),
            template=template,
            hyperparameters=hyperparameters,
        )
        await self.store.run(lambda: self.store.put(job))
        await self._event(job, "info", f"Created fine-tuning job: {job.id}")
        self._spawn(job.id)
        return job

    async def hyperparameters(self, request: FineTuningJobCreate) -> ResolvedHyperparameters:
        """What `request` would train with, each "auto" decided as `create` would decide it;
        nothing is stored or started.

        Raises:
            InvalidArgument, NotFound: as `create`, for the training file or the model.
        """
        training = await self.files.dataset_file(request.training_file, "training_file")
        return _resolve(request, training, await self._base_version(request.model))

    async def get(self, job_id: str) -> JobRecord:
        job = await self.store.run(lambda: self.store.get(job_id))
        if job is None:
            raise NotFound(f"there is no fine-tuning job '{job_id}'", field="fine_tuning_job_id")
        return job

    async def cancel(self, job_id: str) -> JobRecord:
        """Ask a running job to stop; what it made is removed, then it is `cancelled`.

        Raises:
            FailedPrecondition: the job already finished.
        """
        job = await self.get(job_id)
        if job.stage in TERMINAL:
            if job.stage is Stage.CANCELLED:
                return job
            raise FailedPrecondition(
                f"the job {job_id} already {job.stage.value}; only running jobs can be cancelled",
                field="fine_tuning_job_id",
            )
        job = job.model_copy(update={"cancel_requested": True})
        await self.store.run(lambda: self.store.put(job))
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Driving a job that asks to be cancelled stops its remote work and rolls it back.
        await self._drive(job_id)
        return await self.get(job_id)

    async def retry(self, job_id: str) -> JobRecord:
        """Run a failed job again from the stage that failed, reusing what earlier stages made
        (a job that failed converting does not train again). It keeps its id and events.

        Raises:
            FailedPrecondition: the job did not fail.
        """
        async with self._retrying:
            job = await self.get(job_id)
            if job.stage is not Stage.FAILED:
                raise FailedPrecondition(
                    f"the job {job_id} is {job.status}; only a failed job can be retried",
                    field="fine_tuning_job_id",
                )
            update: dict[str, Any] = {
                "stage": job.failed_stage or Stage.VALIDATING_FILES,
                "failed_stage": None,
                "error": None,
                "finished_at": None,
                "estimated_finish": None,
                "cancel_requested": False,
                "retries": job.retries + 1,
            }
            if job.failed_stage is None:
                # Stored before failed jobs kept their outputs (they were deleted): start over.
                update["outputs"] = Outputs()
            if update["stage"] is Stage.TRAINING and job.trainer_state in (
                "",
                "FAILED",
                "CANCELLING",
                "CANCELLED",
            ):
                update["stage"] = Stage.VALIDATING_FILES  # the trainer job ended: a new one
            if update["stage"] is Stage.VALIDATING_FILES:
                update |= {"trainer_job_id": "", "trainer_state": "", "trainer_last_sequence": 0}
            job = await self._save(job, **update)
            await self._event(
                job,
                "info",
                f"Retrying the job from the {job.stage.value} stage (retry {job.retries}); what "
                "earlier stages made is reused",
            )
            self._spawn(job.id)
        return job

    async def checkpoints(self, job: JobRecord) -> list[trainer_pb2.Checkpoint]:
        """The trainer's checkpoints of the job, newest first."""
        if not job.trainer_job_id:
            return []
        answer = await self.trainer.ListCheckpoints(
            trainer_pb2.ListCheckpointsRequest(job_id=job.trainer_job_id, page_size=1000),
            timeout=_INTERACTIVE_TIMEOUT,
        )
        return list(answer.checkpoints)

    # --- driving -----------------------------------------------------------------------------

    def _spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self._drive_with_retries(job_id), name=f"fine-tune {job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(
            lambda done: self._tasks.pop(job_id) if self._tasks.get(job_id) is done else None
        )

    async def _drive_with_retries(self, job_id: str) -> None:
        """Drive the job; a stage interrupted (a service unreachable or past its deadline, a
        stream cut, a bug) is run again up to `attempts` times in a row with backoff, each
        retry an event, then the job fails. Running a stage again re-attaches to its remote
        work. The count starts again whenever the job moved on since the last interruption."""
        failures = 0
        mark: tuple[Any, ...] | None = None
        while True:
            try:
                await self._drive(job_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:
                job = await self.get(job_id)
                if job.stage in TERMINAL:
                    return
                progress = (
                    job.stage,
                    job.trainer_job_id,
                    job.trainer_last_sequence,
                    job.outputs.model_dump_json(),
                )
                if progress != mark:
                    failures, mark = 0, progress
                failures += 1
                if failures >= self.attempts:
                    log.error(
                        "fine-tuning job interrupted too often; it fails",
                        extra={"job": job_id, "stage": job.stage},
                        exc_info=error,
                    )
                    await self._give_up(job, error, failures)
                    return
                wait = min(self.retry_seconds * 2 ** (failures - 1), _MAX_RETRY_SECONDS)
                await self._event(
                    job,
                    "warn",
                    f"The {job.stage.value} stage was interrupted: {_describe(error)}; retrying "
                    f"(attempt {failures + 1} of {self.attempts}) in {wait:g} s",
                )
                log.warning(
                    "fine-tuning job interrupted; retrying",
                    extra={"job": job_id, "stage": job.stage, "wait": wait},
                    exc_info=error,
                )
                await asyncio.sleep(wait)

    async def _give_up(self, job: JobRecord, error: Exception, attempts: int) -> None:
        """End a job whose stage was interrupted `attempts` times in a row: FAILED (CANCELLED
        when a cancel was asked for), reaching the other services only as far as they answer."""
        if job.cancel_requested:
            await self._finish(job, Stage.CANCELLED, None, best_effort=True)
            return
        unreachable = isinstance(error, Unavailable | DeadlineExceeded | ConnectionError)
        failure = JobError(
            code="service_unavailable" if unreachable else "internal",
            message=f"the {job.stage.value} stage was interrupted {attempts} times in a row "
            f"(last: {_describe(error)}); what the job made so far is kept: retry it with POST "
            f"/v1/fine_tuning/jobs/{job.id}/retry once the services are back",
        )
        await self._finish(job, Stage.FAILED, failure, best_effort=True)

    async def _drive(self, job_id: str) -> None:
        steps: dict[Stage, Callable[[JobRecord], Awaitable[JobRecord]]] = {
            Stage.VALIDATING_FILES: self._submit,
            Stage.TRAINING: self._train,
            Stage.CONVERTING: self._convert,
            Stage.EVALUATING: self._evaluate,
            Stage.DEPLOYING: self._deploy,
        }
        job = await self.get(job_id)
        while job.stage not in TERMINAL:
            if job.cancel_requested:
                job = await self._finish(job, Stage.CANCELLED, None)
                break
            try:
                job = await steps[job.stage](job)
            except StageFailedError as failure:
                job = await self._finish(job, Stage.FAILED, failure.error)

    async def _submit(self, job: JobRecord) -> JobRecord:
        request = job.request
        training = await self.files.dataset_file(request.training_file, "training_file")
        validation = (
            await self.files.dataset_file(request.validation_file, "validation_file")
            if request.validation_file
            else None
        )
        # The base version was pinned when the job was created: a version pushed since then
        # must not change what this job trains on.
        base = _ref(job.base_version)
        spec = self._spec(
            request,
            job.id,
            job.seed,
            base,
            job.template,
            job.resolved_hyperparameters(),
            training,
            validation,
        )
        try:
            trainer_job = await self.trainer.SubmitJob(
                trainer_pb2.SubmitJobRequest(spec=spec, request_id=job.request_id())
            )
        except (InvalidArgument, NotFound) as error:
            raise StageFailedError(
                JobError(code="invalid_request", message=error.message, param=error.field)
            ) from error
        return await self._save(
            job,
            stage=Stage.TRAINING,
            trainer_job_id=trainer_job.id,
            trainer_state=trainer_pb2.JobState.Name(trainer_job.state).removeprefix("JOB_STATE_"),
        )

    async def _train(self, job: JobRecord) -> JobRecord:
        watch = self.trainer.WatchJob(
            trainer_pb2.WatchJobRequest(
                job_id=job.trainer_job_id, after_sequence=job.trainer_last_sequence
            )
        )
        async for event in _stream(watch):
            job = await self._mirror(job, event)
        trainer_job = await self.trainer.GetJob(
            trainer_pb2.GetJobRequest(job_id=job.trainer_job_id)
        )
        if trainer_job.state == trainer_pb2.JOB_STATE_FAILED:
            raise StageFailedError(_error(trainer_job.error, "training_failed"))
        if trainer_job.state == trainer_pb2.JOB_STATE_CANCELLED:
            return await self._save(job, cancel_requested=True)
        if trainer_job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            # The stream ended early (the trainer restarted): watch again from where we are.
            return job
        result = trainer_job.result
        outputs = job.outputs.model_copy(
            update={
                "adapter": _ref_text(result.adapter) if result.HasField("adapter") else None,
                "merged": _ref_text(result.merged) if result.HasField("merged") else None,
                "trained_model": (
                    _ref_text(result.trained_model) if result.HasField("trained_model") else None
                ),
            }
        )
        trained_tokens = result.trained_tokens or job.trained_tokens
        if job.request.training_stage() == "rm":
            job = await self._save(
                job, trainer_state="SUCCEEDED", outputs=outputs, trained_tokens=trained_tokens
            )
            await self._event(
                job,
                "info",
                f"Training finished. A reward model scores answers instead of writing them: it "
                f"is registered as {outputs.adapter} (adapter and value head), and not converted "
                "to GGUF or deployed",
            )
            return await self._finish(job, Stage.SUCCEEDED, None)
        await self._event(job, "info", "Training finished; converting the model to GGUF")
        return await self._save(
            job,
            stage=Stage.CONVERTING,
            trainer_state="SUCCEEDED",
            outputs=outputs,
            trained_tokens=trained_tokens,
        )

    async def _mirror(self, job: JobRecord, event: trainer_pb2.JobEvent) -> JobRecord:
        """Record a trainer event as an OpenAI event, and what it says about the job."""
        update: dict[str, Any] = {"trainer_last_sequence": event.sequence}
        kind = event.WhichOneof("payload")
        level: Literal["info", "warn", "error"] = (
            "error"
            if event.level == trainer_pb2.EVENT_LEVEL_ERROR
            else "warn"
            if event.level == trainer_pb2.EVENT_LEVEL_WARNING
            else "info"
        )
        if kind == "stage_change":
            state = trainer_pb2.JobState.Name(event.stage_change.state).removeprefix("JOB_STATE_")
            update["trainer_state"] = state
            # The pipeline announces its own start and end; the trainer's are only steps of it.
            if state not in ("QUEUED", "SUCCEEDED"):
                await self._event(job, level, event.message or f"Trainer: {state.lower()}")
        elif kind == "metrics":
            metrics = event.metrics
            data: dict[str, Any] = {"step": metrics.step, "total_steps": metrics.total_steps}
            if metrics.HasField("loss"):
                data["train_loss"] = metrics.loss
            if metrics.HasField("eval_loss"):
                data["valid_loss"] = metrics.eval_loss
            if metrics.HasField("learning_rate"):
                data["learning_rate"] = metrics.learning_rate
            if metrics.HasField("tokens_per_second"):
                data["tokens_per_second"] = metrics.tokens_per_second
            data["epoch"] = metrics.epoch
            if metrics.trained_tokens:
                update["trained_tokens"] = metrics.trained_tokens
            if metrics.HasField("eta") and metrics.eta.seconds:
                update["estimated_finish"] = int(time.time()) + metrics.eta.seconds
            message = event.message or f"Step {metrics.step}/{metrics.total_steps}"
            await self._event(job, "info", message, kind="metrics", data=data)
        elif kind == "checkpoint":
            await self._event(job, "info", event.message or "Checkpoint saved")
        elif kind == "error":
            await self._event(job, "error", event.error.message or event.message)
        elif kind == "retry":
            # A LLaMA-Factory run killed by a signal, started again by the trainer.
            await self._event(job, "warn", event.message or _retry_message(event.retry))
        # Log lines stay in the trainer's own event history: they are not OpenAI events.
        return await self._save(job, **update)

    async def _convert(self, job: JobRecord) -> JobRecord:
        options = job.request.forgeline
        source = job.outputs.merged or job.outputs.trained_model
        if source is None:
            raise StageFailedError(
                JobError(
                    code="conversion_failed",
                    message="training registered no full model to convert; do not skip the merge",
                )
            )
        outputs = job.outputs
        if not outputs.gguf:
            spec = converter_pb2.ConversionSpec(
                model=converter_pb2.ModelConversion(
                    source=_ref(source),
                    outtype=converter_pb2.GGUF_OUTTYPE_F16,
                    register_outtype=True,
                    quantizations=[
                        converter_pb2.QuantizationTarget(type=q) for q in options.quantizations
                    ],
                ),
                output=converter_pb2.OutputOptions(labels={"fine_tuning_job": job.id}),
            )
            job, result = await self._conversion(job, spec, job.request_id("gguf"))
            gguf = {
                output.file_type.lower(): _ref_text(output.version)
                for output in result.outputs
                if not output.adapter
            }
            outputs = outputs.model_copy(update={"gguf": gguf})
            job = await self._save(job, outputs=outputs)
            sizes = ", ".join(sorted(gguf))
            await self._event(job, "info", f"Converted to GGUF: {sizes}")
        full_modules = _fully_trained_modules(job.request)
        if outputs.adapter and not outputs.gguf_adapter and full_modules:
            await self._event(
                job,
                "info",
                f"The adapter also trains {full_modules} in full (additional_target); llama.cpp's "
                "LoRA format holds only low-rank tensors, so it is served merged, not as a GGUF "
                "adapter",
            )
        elif outputs.adapter and not outputs.gguf_adapter:
            spec = converter_pb2.ConversionSpec(
                adapter=converter_pb2.AdapterConversion(
                    adapter=_ref(outputs.adapter),
                    base=_ref(job.base_version),
                    # llama.cpp applies an adapter as B·(A·x) with A·x cast to the adapter's type:
                    # in F16 a strongly trained adapter overflows it (NaN logits) where the merged
                    # weights do not. F32 costs a few hundred KB on a LoRA.
                    outtype=converter_pb2.GGUF_OUTTYPE_F32,
                ),
                output=converter_pb2.OutputOptions(labels={"fine_tuning_job": job.id}),
            )
            job, result = await self._conversion(job, spec, job.request_id("lora"))
            adapters = [_ref_text(o.version) for o in result.outputs if o.adapter]
            outputs = outputs.model_copy(update={"gguf_adapter": adapters[0] if adapters else None})
            job = await self._save(job, outputs=outputs)
            await self._event(job, "info", "Converted the LoRA adapter to a GGUF adapter")
        evaluated = job.request.evaluation() is not None
        return await self._save(job, stage=Stage.EVALUATING if evaluated else Stage.DEPLOYING)

    async def _conversion(
        self, job: JobRecord, spec: converter_pb2.ConversionSpec, request_id: str
    ) -> tuple[JobRecord, converter_pb2.ConversionResult]:
        """Run (or re-attach to) one conversion; the job (with the converter's retries
        mirrored as events) and the result, or `StageFailedError`.

        A conversion that failed because the converter could not reach the registry is run
        afresh (a new request id) by the pipeline's retries: `Unavailable` is raised."""
        stream = self.converter.Convert(
            converter_pb2.ConvertRequest(spec=spec, request_id=request_id)
        )
        event: converter_pb2.ConversionEvent
        async for event in _stream(stream):
            kind = event.WhichOneof("payload")
            if kind == "accepted":
                self._conversions[job.id] = event.accepted.id
            elif kind == "result":
                return job, event.result
            elif kind == "retry" and event.sequence > job.conversion_sequences.get(request_id, 0):
                await self._event(job, "warn", _retry_message(event.retry))
                sequences = job.conversion_sequences | {request_id: event.sequence}
                job = await self._save(job, conversion_sequences=sequences)
            elif kind == "error":
                if (await self.get(job.id)).cancel_requested:
                    break
                if event.error.code == "registry_unavailable":
                    await self._save(job, retries=job.retries + 1)
                    raise Unavailable(f"the conversion failed: {event.error.message}")
                raise StageFailedError(_error(event.error, "conversion_failed"))
        conversion_id = self._conversions.get(job.id, "")
        if conversion_id:
            conversion = await self.converter.GetConversion(
                converter_pb2.GetConversionRequest(conversion_id=conversion_id)
            )
            if conversion.state == converter_pb2.CONVERSION_STATE_SUCCEEDED:
                return job, conversion.result
        raise ConnectionError("the conversion stream ended without a result")

    async def _evaluate(self, job: JobRecord) -> JobRecord:
        """Score the base and every artifact (the quality card), then check `deploy.require`."""
        request = job.request
        options = request.evaluation()
        assert options is not None
        quantization = request.forgeline.deploy.quantization.lower()
        card: list[ArtifactQuality] = []
        if self.quality is None:
            await self._event(job, "warn", "Not evaluated: this gateway has no Evals API")
        else:
            file_id = request.validation_file or request.training_file
            rows = await self.quality.rows(file_id, options.max_rows)
            source = "validation" if request.validation_file else "training"
            if not rows:
                await self._event(
                    job,
                    "warn",
                    f"Not evaluated: the {source} file has no prompts with an answer to score "
                    "against (preference pairs and pre-training text have none)",
                )
            else:
                await self._event(
                    job,
                    "info",
                    f"Evaluating the base model and each artifact on {len(rows)} rows of the "
                    f"{source} file ({', '.join(options.graders)})",
                )
                card = await self._quality_card(job, rows, options, quantization)
        outputs = job.outputs.model_copy(update={"quality": card})
        require = request.forgeline.deploy.require
        if require is not None and request.forgeline.deploy.enabled:
            met, reason = check_requirement(require, card, quantization)
            outputs = outputs.model_copy(
                update={"gate": "met" if met else "missed", "gate_reason": reason}
            )
            await self._event(
                job,
                "info" if met else "warn",
                f"deploy.require met: {reason}"
                if met
                else f"deploy.require not met, so nothing is deployed: {reason}",
                data={"gate": "met" if met else "missed"},
            )
        return await self._save(job, outputs=outputs, stage=Stage.DEPLOYING)

    async def _quality_card(
        self, job: JobRecord, rows: list[dict[str, Any]], options: EvalOptions, quantization: str
    ) -> list[ArtifactQuality]:
        """Each artifact's line: the base on its deployment, the adapter on the base's
        deployment (`_adapter_spec`: on vLLM the HF/PEFT one) and each GGUF file on a
        deployment made for the evaluation (removed after)."""
        assert self.quality is not None
        quality = self.quality
        eval_id = await quality.open_eval(job.id, options)
        outputs = job.outputs
        base, no_base = await self._base_deployment(job, quantization)
        candidates: list[tuple[str, str | None, JobSpec | None]] = []
        if base is not None:
            spec = self.deployments.get(base).spec
            version = (
                getattr(spec, "registry_gguf", None)
                or getattr(spec, "registry_model", None)
                or spec.metadata.version
            )
            candidates.append(("base", version, None))
            if outputs.gguf_adapter:
                adapter = self._adapter_spec(job, base, f"{job.id}:eval-adapter")
                candidates.append(("adapter", _adapter_version(adapter), adapter))
        for file_type, version in outputs.gguf.items():
            candidates.append(
                (
                    file_type,
                    version,
                    LlamaCppSpec(
                        name=f"{job.id}:eval-{file_type}",
                        backend="llamacpp",
                        registry_gguf=version,
                        context_size=job.request.forgeline.deploy.context_size,
                    ),
                )
            )
        card: list[ArtifactQuality] = []
        if base is None:
            card.append(ArtifactQuality(artifact="base", error=no_base))
        for artifact, version, spec in candidates:
            model = base if spec is None else spec.name
            assert model is not None
            try:
                if spec is not None:
                    await self._create_deployment(spec)
                line = await quality.score(
                    eval_id,
                    artifact=artifact,
                    version=version,
                    model=model,
                    rows=rows,
                    options=options,
                )
            except StageFailedError as failure:
                line = ArtifactQuality(
                    artifact=artifact, version=version, error=failure.error.message
                )
            finally:
                if spec is not None:
                    with contextlib.suppress(NotFound):
                        await self.deployments.delete(spec.name)
            card.append(line)
            await self._event(
                job,
                "info" if line.error is None else "warn",
                f"Quality of {line.describe()}",
                data={"quality": line.model_dump(mode="json")},
            )
            if line.scores and version and artifact != "base":
                await self._label_quality(version, line)
        return card

    async def _label_quality(self, reference: str, line: ArtifactQuality) -> None:
        """Record `line`'s scores as labels of its registry version (``quality.rouge_l``)."""
        ref = _ref(reference)
        version = await self.registry.GetVersion(
            registry_pb2.GetVersionRequest(
                model=ref.model, version=ref.version, view=registry_pb2.VERSION_VIEW_BASIC
            ),
            timeout=_INTERACTIVE_TIMEOUT,
        )
        labels = dict(version.labels) | quality_labels(line)
        await self.registry.UpdateVersion(
            registry_pb2.UpdateVersionRequest(
                version=registry_pb2.Version(model=ref.model, number=ref.version, labels=labels),
                update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
            ),
            timeout=_INTERACTIVE_TIMEOUT,
        )

    async def _deploy(self, job: JobRecord) -> JobRecord:
        options = job.request.forgeline.deploy
        if options.enabled and job.outputs.gate == "missed":
            return await self._finish(job, Stage.SUCCEEDED, None)
        if options.enabled:
            quantization = options.quantization.lower()
            version = job.outputs.gguf.get(quantization)
            if version is None:
                raise StageFailedError(
                    JobError(
                        code="deployment_failed",
                        message=f"no {quantization} GGUF was made to deploy (made: "
                        f"{sorted(job.outputs.gguf)})",
                    )
                )
            if job.outputs.served_as is None:
                job = await self._choose_serving(job, version, quantization)
            if job.outputs.served_as == "merged":
                await self._create_deployment(
                    LlamaCppSpec(
                        name=job.fine_tuned_model,
                        backend="llamacpp",
                        registry_gguf=version,
                        context_size=options.context_size,
                        metadata=ModelMetadata(
                            base=job.request.model,
                            version=version,
                            quantization=quantization,
                            quality=_scores(job, quantization),
                        ),
                    )
                )
            outputs = job.outputs.model_copy(update={"deployment": job.fine_tuned_model})
            job = await self._save(job, outputs=outputs)
            if options.alias:
                await self._move_alias(job, options.alias, version)
        return await self._finish(job, Stage.SUCCEEDED, None)

    async def _move_alias(self, job: JobRecord, alias: str, reference: str) -> None:
        """Point the registry alias `alias` of the served GGUF's model at its version."""
        ref = _ref(reference)
        try:
            await self.registry.SetAlias(
                registry_pb2.SetAliasRequest(model=ref.model, alias=alias, version=ref.version),
                timeout=_INTERACTIVE_TIMEOUT,
            )
        except (InvalidArgument, FailedPrecondition, NotFound) as error:
            await self._event(
                job, "warn", f"The alias '{alias}' was not moved to {reference}: {error.message}"
            )
            return
        await self._event(
            job, "info", f"Moved the registry alias {ref.model}@{alias} to {reference}"
        )

    async def _create_deployment(self, spec: JobSpec) -> bool:
        """Deploy `spec`; False when a deployment of its name already exists (placed before a
        restart: the deployments of a job are keyed by their names)."""
        try:
            await self.deployments.create(spec)
        except AlreadyExists:
            return False
        except (Unavailable, DeadlineExceeded):
            raise  # the registry out of reach: the pipeline's retries run the stage again
        except ForgelineError as error:
            raise StageFailedError(
                JobError(code="deployment_failed", message=error.message)
            ) from error
        return True

    async def _choose_serving(self, job: JobRecord, merged: str, quantization: str) -> JobRecord:
        """Decide how the job's model is served (`deploy.serve`, on evidence), and record it.
        Served as an adapter, its deployment is placed here; merged, it is placed by the
        caller.

        The evidence is the job's quality card where it scored both the adapter and the merged
        GGUF (`adapter_verdict`); else the greedy-agreement check (`agreement.py`)."""
        options = job.request.forgeline.deploy
        outputs = job.outputs
        base: str | None = None
        reason: str | None
        if options.serve == "merged":
            reason = "deploy.serve is 'merged'"
        elif not outputs.gguf_adapter:
            full = _fully_trained_modules(job.request)
            reason = (
                f"its adapter trains {full} in full (additional_target), which a GGUF adapter "
                "cannot hold"
                if outputs.adapter and full
                else "the job made no GGUF adapter "
                f"(finetuning_type {job.request.forgeline.finetuning_type})"
            )
        else:
            base, reason = await self._base_deployment(job, quantization)
        agreement: Agreement | None = None
        evidence = ""
        if base is not None:
            verdict = adapter_verdict(outputs.quality, quantization)
            if verdict is not None:
                holds, evidence = verdict
                reason = (
                    await self._place_adapter(job, base)
                    if holds
                    else f"the adapter does not hold the merged model's quality: {evidence}"
                )
            elif self.adapter_check is None:
                reason = "this gateway cannot compare the adapter's answers with the merged model's"
            else:
                agreement, reason = await self._check_adapter(job, base, merged, quantization)
                evidence = agreement.describe() if agreement is not None else ""
        if base is not None and reason is None:
            job = await self._save(
                job,
                outputs=outputs.model_copy(
                    update={
                        "served_as": "adapter",
                        "base_deployment": base,
                        "agreement": agreement.text if agreement is not None else None,
                    }
                ),
            )
            await self._event(
                job,
                "info",
                f"Serving {job.fine_tuned_model} as an adapter on the base deployment "
                f"'{base}' (one process and one copy of the base for all its fine-tunes): "
                f"{evidence}",
            )
            return job
        job = await self._save(
            job,
            outputs=outputs.model_copy(
                update={
                    "served_as": "merged",
                    "agreement": agreement.text if agreement is not None else None,
                }
            ),
        )
        await self._event(
            job,
            "info",
            f"Serving {job.fine_tuned_model} merged (its {quantization} GGUF on a process of "
            f"its own), not as an adapter: {reason}",
        )
        return job

    async def _base_deployment(
        self, job: JobRecord, quantization: str
    ) -> tuple[str | None, str | None]:
        """The ready deployment of the job's base version that its adapter can be served on,
        or None and why there is none. Preferred in this order: llama.cpp (processes the gateway
        starts) or Ollama serving a GGUF converted from the base version (by its
        `registry_gguf` or `metadata.version`), one of `quantization` first; then a vLLM
        container the gateway started from the base version itself (`registry_model`) with
        `enable_lora`, on which the job's HF/PEFT adapter is loaded (no conversion); the
        oldest of equals."""
        found: list[tuple[int, bool, int, str]] = []
        for state in self.deployments.list():
            spec = state.spec
            if isinstance(spec, VllmSpec):
                if (
                    state.ready
                    and job.outputs.adapter
                    and spec.base is None
                    and spec.enable_lora
                    and spec.registry_model == job.base_version
                    and spec.name != job.fine_tuned_model
                ):
                    found.append((2, False, state.created, spec.name))
                continue
            if (
                not state.ready
                or not isinstance(spec, LlamaCppSpec | OllamaSpec)
                or spec.base is not None
                or spec.embeddings
                or (isinstance(spec, LlamaCppSpec) and spec.urls)
                or spec.name == job.fine_tuned_model
            ):
                continue
            version = spec.registry_gguf or spec.metadata.version
            if version and await self._converted_from(version, job.base_version):
                other = (spec.metadata.quantization or "").lower() != quantization
                rank = 1 if isinstance(spec, OllamaSpec) else 0
                found.append((rank, other, state.created, spec.name))
        if found:
            return min(found)[3], None
        return None, (
            f"no llama.cpp or Ollama deployment serves a GGUF of the base model "
            f"{job.base_version} (one whose registry_gguf or metadata.version names a GGUF "
            f"converted from it), and no vLLM deployment serves it with enable_lora (one whose "
            f"registry_model is {job.base_version}); deploy one (forgeline deploy "
            f"{job.base_version} --backend llamacpp --quantization {quantization}; or on vLLM, "
            f"POST /v1/deployments with backend vllm, registry_model {job.base_version} and "
            "enable_lora true) to serve fine-tunes on it as adapters"
        )

    async def _converted_from(self, reference: str, base: str) -> bool:
        """Whether the registry version `reference` was converted from the version `base`."""
        model, _, number = reference.rpartition(":")
        if not model or not number.isdigit():
            return False
        try:
            version = await self.registry.GetVersion(
                registry_pb2.GetVersionRequest(
                    model=model, version=int(number), view=registry_pb2.VERSION_VIEW_BASIC
                ),
                timeout=_INTERACTIVE_TIMEOUT,
            )
        except (NotFound, InvalidArgument):
            return False
        return any(
            parent.relation == registry_pb2.RELATION_CONVERTED_FROM
            and _ref_text(parent.version) == base
            for parent in version.lineage.parents
        )

    async def _place_adapter(self, job: JobRecord, base: str) -> str | None:
        """Deploy the job's adapter on `base` under the job's model name (`_adapter_spec`):
        None once it is served there, else why it is not."""
        name = job.fine_tuned_model
        request = job.request
        base_spec = self.deployments.get(base).spec
        adapter = self._adapter_spec(job, base, name)
        metadata = ModelMetadata(
            base=request.model,
            version=_adapter_version(adapter),
            quantization=base_spec.metadata.quantization,
            quality=_scores(job, "adapter"),
        )
        adapter = adapter.model_copy(update={"metadata": metadata})
        try:
            if not await self._create_deployment(adapter):
                existing = self.deployments.get(name).spec
                if getattr(existing, "base", None) != base:
                    return f"{name} is already deployed otherwise"
        except StageFailedError as failure:
            return f"the adapter could not be served on '{base}': {failure.error.message}"
        return None

    def _adapter_spec(self, job: JobRecord, base: str, name: str) -> JobSpec:
        """The adapter deployment `name` of the job's adapter on the deployment `base`, for its
        backend: the GGUF adapter loaded into the base's llama-server processes, or an Ollama
        model made from the base's with it (`ADAPTER`); on vLLM the HF/PEFT adapter the trainer
        registered, loaded into the base's running server (vLLM serves PEFT adapters as they
        are, so nothing is converted)."""
        base_spec = self.deployments.get(base).spec
        if isinstance(base_spec, VllmSpec):
            assert job.outputs.adapter is not None  # `_base_deployment` asks for it
            return VllmSpec(
                name=name, backend="vllm", base=base, registry_adapter=job.outputs.adapter
            )
        assert job.outputs.gguf_adapter is not None
        fields: dict[str, Any] = {
            "name": name,
            "base": base,
            "registry_lora": [job.outputs.gguf_adapter],
        }
        if isinstance(base_spec, OllamaSpec):
            return OllamaSpec(backend="ollama", **fields)
        return LlamaCppSpec(backend="llamacpp", **fields)

    async def _check_adapter(
        self, job: JobRecord, base: str, merged: str, quantization: str
    ) -> tuple[Agreement | None, str | None]:
        """Deploy the job's adapter on `base` and compare its greedy answers with the merged
        GGUF's (deployed for the check, then removed): the comparison, and None if the adapter
        stays deployed, else why it was removed."""
        assert self.adapter_check is not None
        placed = await self._place_adapter(job, base)
        if placed is not None:
            return None, placed
        name = job.fine_tuned_model
        request = job.request
        source = "validation" if request.validation_file else "training"
        prompts = await self.adapter_check.prompts(
            request.validation_file or request.training_file, PROMPTS
        )
        agreement = None
        if prompts:
            check = _check_name(job)
            await self._create_deployment(
                LlamaCppSpec(
                    name=check,
                    backend="llamacpp",
                    registry_gguf=merged,
                    context_size=request.forgeline.deploy.context_size,
                    parallel=1,
                    metadata=ModelMetadata(
                        base=request.model, version=merged, quantization=quantization
                    ),
                )
            )
            try:
                agreement = await compare(self.adapter_check.answer, name, check, prompts)
            finally:
                with contextlib.suppress(NotFound):
                    await self.deployments.delete(check)
            if agreement.holds:
                return agreement, None
            reason = (
                f"on the {source} file's prompts the adapter does not hold the merged model's "
                f"quality: {agreement.describe()}"
            )
        else:
            reason = f"the {source} file has no chat prompts to compare the adapter's answers on"
        with contextlib.suppress(NotFound):
            await self.deployments.delete(name)
        return agreement, reason

    async def _finish(
        self, job: JobRecord, stage: Stage, error: JobError | None, *, best_effort: bool = False
    ) -> JobRecord:
        """End the job in `stage`. A cancelled job's outputs are removed; a failed job's are
        kept, labelled, for a retry (or the user) to use. With `best_effort` (and always for a
        failure) a service that does not answer does not stop the job from ending."""
        failed = stage is Stage.FAILED
        if stage is not Stage.SUCCEEDED:
            job = await self._stop_remote_work(job, best_effort=best_effort or failed)
        if stage is Stage.CANCELLED:
            await self._roll_back(job)
        elif failed:
            await self._label_outputs(job, "failed")
        elif job.retries:
            await self._label_outputs(job, None)  # no longer the outputs of a failed job
        update: dict[str, Any] = {}
        if failed and job.stage not in TERMINAL:
            update["failed_stage"] = job.stage
        job = await self._save(
            job, stage=stage, error=error, finished_at=int(time.time()), **update
        )
        if stage is Stage.SUCCEEDED:
            await self._event(job, "info", f"New fine-tuned model created: {job.fine_tuned_model}")
            await self._event(job, "info", "The job has successfully completed")
        elif stage is Stage.CANCELLED:
            await self._event(job, "info", "The job was cancelled; nothing it made was kept")
        else:
            assert error is not None
            await self._event(job, "error", f"The job failed: {error.message}")
            kept = job.outputs.registered()
            if kept:
                where = (job.failed_stage or Stage.VALIDATING_FILES).value
                await self._event(
                    job,
                    "info",
                    f"Kept what the job made ({', '.join(reversed(kept))}), labelled "
                    f"{FAILED_LABEL}=failed: retry the job from the {where} stage with POST "
                    f"/v1/fine_tuning/jobs/{job.id}/retry, or delete them",
                )
        log.info("fine-tuning job finished", extra={"job": job.id, "stage": stage})
        return job

    async def _stop_remote_work(self, job: JobRecord, *, best_effort: bool = False) -> JobRecord:
        """Cancel the trainer job or conversion in progress; the job with the trainer's state.
        With `best_effort`, a service that cannot be reached is left alone (logged)."""
        try:
            return await self._cancel_remote_work(job)
        except (ForgelineError, ConnectionError) as error:
            if not best_effort:
                raise
            log.warning(
                "could not stop the remote work of a fine-tuning job",
                extra={"job": job.id, "stage": job.stage},
                exc_info=error,
            )
            return job

    async def _cancel_remote_work(self, job: JobRecord) -> JobRecord:
        if job.trainer_job_id and job.stage is Stage.TRAINING:
            try:
                trainer_job = await self.trainer.CancelJob(
                    trainer_pb2.CancelJobRequest(job_id=job.trainer_job_id),
                    timeout=_INTERACTIVE_TIMEOUT,
                )
            except FailedPrecondition:  # it had already ended
                trainer_job = await self.trainer.GetJob(
                    trainer_pb2.GetJobRequest(job_id=job.trainer_job_id),
                    timeout=_INTERACTIVE_TIMEOUT,
                )
            state = trainer_pb2.JobState.Name(trainer_job.state).removeprefix("JOB_STATE_")
            job = job.model_copy(update={"trainer_state": state})
        conversion_id = self._conversions.get(job.id)
        if conversion_id and job.stage is Stage.CONVERTING:
            with contextlib.suppress(FailedPrecondition):
                await self.converter.CancelConversion(
                    converter_pb2.CancelConversionRequest(conversion_id=conversion_id),
                    timeout=_INTERACTIVE_TIMEOUT,
                )
        return job

    async def _label_outputs(self, job: JobRecord, status: str | None) -> None:
        """Set (or, with None, remove) the ``fine_tuning_job_status`` label on every version the
        job registered; best effort: a version deleted or a registry out of reach is logged."""
        for reference in job.outputs.registered():
            ref = _ref(reference)
            try:
                version = await self.registry.GetVersion(
                    registry_pb2.GetVersionRequest(
                        model=ref.model, version=ref.version, view=registry_pb2.VERSION_VIEW_BASIC
                    ),
                    timeout=_INTERACTIVE_TIMEOUT,
                )
                labels = dict(version.labels)
                if labels.get(FAILED_LABEL) == status:
                    continue
                if status is None:
                    labels.pop(FAILED_LABEL, None)
                else:
                    labels[FAILED_LABEL] = status
                await self.registry.UpdateVersion(
                    registry_pb2.UpdateVersionRequest(
                        version=registry_pb2.Version(
                            model=ref.model, number=ref.version, labels=labels
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
                    ),
                    timeout=_INTERACTIVE_TIMEOUT,
                )
            except (ForgelineError, ConnectionError) as error:
                log.warning(
                    "could not label a version of a fine-tuning job",
                    extra={"job": job.id, "version": reference},
                    exc_info=error,
                )

    async def _roll_back(self, job: JobRecord) -> None:
        """Remove the deployment and every version the job registered, newest first (a
        cancelled job keeps nothing)."""
        # The job's deployment, and the merged model an adapter check was comparing with, also
        # when the job was cancelled before it recorded them.
        for name in dict.fromkeys(
            [job.outputs.deployment or job.fine_tuned_model, job.fine_tuned_model, _check_name(job)]
        ):
            with contextlib.suppress(NotFound):
                await self.deployments.delete(name)
        for reference in job.outputs.registered():
            ref = _ref(reference)
            with contextlib.suppress(NotFound):
                await self.registry.DeleteVersion(
                    registry_pb2.DeleteVersionRequest(
                        model=ref.model, version=ref.version, force=True
                    )
                )
            await self._event(job, "info", f"Removed {reference} from the registry")

    # --- helpers -----------------------------------------------------------------------------

    def _spec(
        self,
        request: FineTuningJobCreate,
        job_id: str,
        seed: int,
        base: common_pb2.VersionRef,
        template: str | None,
        hyperparameters: ResolvedHyperparameters,
        training: DatasetFile,
        validation: DatasetFile | None,
    ) -> trainer_pb2.JobSpec:
        return trainer_spec(
            request,
            job_id=job_id,
            seed=seed,
            base=base,
            template=template,
            hyperparameters=hyperparameters,
            training=training,
            validation=validation,
            metadata={"fine_tuning_job": job_id, **(request.metadata or {})},
        )

    async def _base_version(self, model: str) -> registry_pb2.Version:
        if is_hub_id(model):
            if self.hub is None:
                raise FailedPrecondition(
                    "this gateway cannot resolve hub ids (hf:, modelscope:): name a registry model",
                    field="model",
                )
            # Imported now (or found imported): the job then pins that version like any other.
            try:
                return await self.hub.base_version(model, "model")
            except NotFound as error:  # no such repository or revision on the hub
                raise InvalidArgument(error.message, field="model") from error
        try:
            return await self.registry.ResolveVersion(
                registry_pb2.ResolveVersionRequest(
                    reference=model, view=registry_pb2.VERSION_VIEW_BASIC
                ),
                timeout=_INTERACTIVE_TIMEOUT,
            )
        except NotFound as error:
            raise InvalidArgument(
                f"the model '{model}' is not in the registry: push it first "
                f"(`forgeline models push DIR {model}`) or pick one of `forgeline models list`",
                field="model",
            ) from error

    async def _save(self, job: JobRecord, **update: Any) -> JobRecord:
        job = job.model_copy(update=update)
        await self.store.run(lambda: self.store.put(job))
        return job

    async def _event(
        self,
        job: JobRecord,
        level: Literal["info", "warn", "error"],
        message: str,
        *,
        kind: Literal["message", "metrics"] = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        await self.store.run(
            lambda: self.store.add_event(job.id, level, message, kind=kind, data=data)
        )


async def _stream(call: Any) -> AsyncIterator[Any]:
    """Iterate a server stream, with gRPC failures as domain errors."""
    try:
        async for item in call:
            yield item
    except grpc.RpcError as error:
        raise error_from_rpc_error(error) from error


def _fully_trained_modules(request: FineTuningJobCreate) -> str | None:
    """The modules a LoRA job trains in full beside its adapter (LLaMA-Factory's
    ``additional_target``), which a GGUF LoRA adapter cannot carry (llama.cpp PR 9948)."""
    value = request.forgeline.arguments.get(
        "additional_target", request.forgeline.lora.additional_target
    )
    return str(value) if value else None


def _scores(job: JobRecord, artifact: str) -> dict[str, float] | None:
    """The quality card's scores of `artifact`, for the deployment's metadata; None unscored."""
    line = next((q for q in job.outputs.quality if q.artifact == artifact), None)
    return dict(line.scores) if line is not None and line.scores else None


def _resolve(
    request: FineTuningJobCreate, training: DatasetFile, base: registry_pb2.Version
) -> ResolvedHyperparameters:
    return resolve(
        request.effective_hyperparameters(),
        finetuning_type=request.forgeline.finetuning_type,
        examples=training.records,
        model_bytes=base.size_bytes,
    )


def _adapter_version(spec: JobSpec) -> str | None:
    """The registry version of the adapter that the adapter deployment `spec` serves."""
    if isinstance(spec, VllmSpec):
        return spec.registry_adapter
    return spec.registry_lora[0] if spec.registry_lora else None


def _check_name(job: JobRecord) -> str:
    """The deployment of the merged GGUF an adapter check compares the adapter with."""
    return f"{job.id}:adapter-check-merged"


def _describe(error: BaseException) -> str:
    return error.message if isinstance(error, ForgelineError) else repr(error)


def _retry_message(retry: common_pb2.Retry) -> str:
    """What a service's retry of a killed process tells the user."""
    reason = retry.error.message.splitlines()[0] if retry.error.message else retry.error.code
    reason = reason[:1].upper() + reason[1:]
    delay = retry.delay.ToTimedelta().total_seconds()
    return f"{reason}; retrying (attempt {retry.attempt} of {retry.max_attempts}) in {delay:g} s"
