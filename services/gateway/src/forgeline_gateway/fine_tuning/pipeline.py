"""The fine-tuning pipeline: an OpenAI fine-tuning job carried from uploaded data to a served model.

    validating_files -> training (trainer: validate, train, merge, register adapter + merged)
    -> converting (converter: merged -> GGUF f16 + quantizations; adapter -> GGUF adapter)
    -> deploying (a llama.cpp deployment named after the job's `fine_tuned_model`) -> succeeded

The gateway owns the pipeline and persists it (`JobStore`) after every step, so it survives a
restart of any service: each stage's remote work is keyed by the job id (the trainer's and the
converter's `request_id`, the deployment's name), so redoing a stage after a restart re-attaches
to the work already done instead of repeating it. A job that fails or is cancelled leaves nothing
behind: what it registered is deleted and what it deployed is removed.
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

from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate, JobError
from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.deployments.spec import LlamaCppSpec, ModelMetadata
from forgeline_gateway.fine_tuning.plan import DatasetFile, trainer_spec
from forgeline_gateway.fine_tuning.records import TERMINAL, JobRecord, Stage
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    ForgelineError,
    InvalidArgument,
    NotFound,
    error_from_rpc_error,
)
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_proto.registry.v1 import registry_pb2, registry_pb2_grpc
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc

__all__ = ["DatasetFiles", "Pipeline", "StageFailedError", "fine_tuned_model_name"]

log = logging.getLogger(__name__)

#: Longest wait for a service while a user waits on the HTTP answer (creating a job).
_INTERACTIVE_TIMEOUT = 30.0
#: Backoff between attempts while a service the job needs is unreachable.
_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0)
_OWNER = re.compile(r"[^A-Za-z0-9_-]+")


class DatasetFiles(Protocol):
    """Resolves uploaded file ids to datasets in the registry (the Files API owns them)."""

    async def dataset_file(self, file_id: str, param: str) -> DatasetFile:
        """The dataset of `file_id`; a `ForgelineError` naming `param` when there is none."""
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
    ) -> None:
        self.store = store
        self.trainer = trainer
        self.converter = converter
        self.registry = registry
        self.files = files
        self.deployments = deployments
        self.organization = organization
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._conversions: dict[str, str] = {}

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
        spec = self._spec(request, job_id, seed, base_ref, template, training, validation)
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
            fine_tuned_model=fine_tuned_model_name(request.model, owner, request.suffix, job_id),
            seed=seed,
            base_version=_ref_text(base_ref),
            template=template,
        )
        await self.store.run(lambda: self.store.put(job))
        await self._event(job, "info", f"Created fine-tuning job: {job.id}")
        self._spawn(job.id)
        return job

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
        attempt = 0
        while True:
            try:
                await self._drive(job_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a service down or a bug: retry, never lose the job
                wait = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                job = await self.get(job_id)
                if attempt == 0:
                    await self._event(
                        job,
                        "warn",
                        f"Waiting for a service during {job.stage.value}: {_describe(error)}",
                    )
                log.warning(
                    "fine-tuning job interrupted; retrying",
                    extra={"job": job_id, "stage": job.stage, "wait": wait},
                    exc_info=error,
                )
                attempt += 1
                await asyncio.sleep(wait)

    async def _drive(self, job_id: str) -> None:
        steps: dict[Stage, Callable[[JobRecord], Awaitable[JobRecord]]] = {
            Stage.VALIDATING_FILES: self._submit,
            Stage.TRAINING: self._train,
            Stage.CONVERTING: self._convert,
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
        spec = self._spec(request, job.id, job.seed, base, job.template, training, validation)
        try:
            trainer_job = await self.trainer.SubmitJob(
                trainer_pb2.SubmitJobRequest(spec=spec, request_id=job.id)
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
            result = await self._conversion(job, spec, f"{job.id}-gguf")
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
            result = await self._conversion(job, spec, f"{job.id}-lora")
            adapters = [_ref_text(o.version) for o in result.outputs if o.adapter]
            outputs = outputs.model_copy(update={"gguf_adapter": adapters[0] if adapters else None})
            job = await self._save(job, outputs=outputs)
            await self._event(job, "info", "Converted the LoRA adapter to a GGUF adapter")
        return await self._save(job, stage=Stage.DEPLOYING)

    async def _conversion(
        self, job: JobRecord, spec: converter_pb2.ConversionSpec, request_id: str
    ) -> converter_pb2.ConversionResult:
        """Run (or re-attach to) one conversion; its result, or `StageFailedError`."""
        stream = self.converter.Convert(
            converter_pb2.ConvertRequest(spec=spec, request_id=request_id)
        )
        event: converter_pb2.ConversionEvent
        async for event in _stream(stream):
            kind = event.WhichOneof("payload")
            if kind == "accepted":
                self._conversions[job.id] = event.accepted.id
            elif kind == "result":
                return event.result
            elif kind == "error":
                if (await self.get(job.id)).cancel_requested:
                    break
                raise StageFailedError(_error(event.error, "conversion_failed"))
        conversion_id = self._conversions.get(job.id, "")
        if conversion_id:
            conversion = await self.converter.GetConversion(
                converter_pb2.GetConversionRequest(conversion_id=conversion_id)
            )
            if conversion.state == converter_pb2.CONVERSION_STATE_SUCCEEDED:
                return conversion.result
        raise ConnectionError("the conversion stream ended without a result")

    async def _deploy(self, job: JobRecord) -> JobRecord:
        options = job.request.forgeline.deploy
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
            spec = LlamaCppSpec(
                name=job.fine_tuned_model,
                backend="llamacpp",
                registry_gguf=version,
                context_size=options.context_size,
                metadata=ModelMetadata(
                    base=job.request.model, version=version, quantization=quantization
                ),
            )
            try:
                await self.deployments.create(spec)
            except AlreadyExists:
                pass  # placed before a restart: the deployment is keyed by the model name
            except ForgelineError as error:
                raise StageFailedError(
                    JobError(code="deployment_failed", message=error.message)
                ) from error
            outputs = job.outputs.model_copy(update={"deployment": job.fine_tuned_model})
            job = await self._save(job, outputs=outputs)
        return await self._finish(job, Stage.SUCCEEDED, None)

    async def _finish(self, job: JobRecord, stage: Stage, error: JobError | None) -> JobRecord:
        if stage is not Stage.SUCCEEDED:
            job = await self._stop_remote_work(job)
            await self._roll_back(job)
        job = await self._save(job, stage=stage, error=error, finished_at=int(time.time()))
        if stage is Stage.SUCCEEDED:
            await self._event(job, "info", f"New fine-tuned model created: {job.fine_tuned_model}")
            await self._event(job, "info", "The job has successfully completed")
        elif stage is Stage.CANCELLED:
            await self._event(job, "info", "The job was cancelled; nothing it made was kept")
        else:
            assert error is not None
            await self._event(job, "error", f"The job failed: {error.message}")
        log.info("fine-tuning job finished", extra={"job": job.id, "stage": stage})
        return job

    async def _stop_remote_work(self, job: JobRecord) -> JobRecord:
        """Cancel the trainer job or conversion in progress; the job with the trainer's state."""
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

    async def _roll_back(self, job: JobRecord) -> None:
        """Remove the deployment and every version the job registered, newest first."""
        if job.outputs.deployment:
            with contextlib.suppress(NotFound):
                await self.deployments.delete(job.outputs.deployment)
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
        training: DatasetFile,
        validation: DatasetFile | None,
    ) -> trainer_pb2.JobSpec:
        return trainer_spec(
            request,
            job_id=job_id,
            seed=seed,
            base=base,
            template=template,
            training=training,
            validation=validation,
            metadata={"fine_tuning_job": job_id, **(request.metadata or {})},
        )

    async def _base_version(self, model: str) -> registry_pb2.Version:
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


def _describe(error: BaseException) -> str:
    return error.message if isinstance(error, ForgelineError) else repr(error)
