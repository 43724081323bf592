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

Where each part is: the validating_files and training stages in `training.py`, converting in
`converting.py`, evaluating (the quality card, the deployment gate) in `evaluating.py`,
deploying in `deploying.py` with the choice between an adapter and a merged model in
`serving_choice.py`; how a job ends (cancelled, failed, succeeded) and is rolled back in
`finishing.py`. They share the job's record and events (`journal.py`), the deployments a job
makes and their names (`job_deployments.py`) and how a stage fails a job (`stage_support.py`).
This module creates jobs and drives them from stage to stage.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.fine_tuning.auto import ResolvedHyperparameters, resolve
from forgeline_gateway.fine_tuning.converting import ConvertingStage
from forgeline_gateway.fine_tuning.deploying import DeployingStage
from forgeline_gateway.fine_tuning.drivers import JobDrivers
from forgeline_gateway.fine_tuning.evaluating import EvaluatingStage
from forgeline_gateway.fine_tuning.finishing import JobFinisher
from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.plan import DatasetFile
from forgeline_gateway.fine_tuning.quality import QualityCheck
from forgeline_gateway.fine_tuning.records import (
    TERMINAL,
    ArtifactQuality,
    EvalSettings,
    JobFailure,
    JobRecord,
    JobRequest,
    Outputs,
    Stage,
)
from forgeline_gateway.fine_tuning.serving_choice import AdapterCheck, ServingChoice
from forgeline_gateway.fine_tuning.stage_support import (
    INTERACTIVE_TIMEOUT,
    StageFailedError,
    describe,
    ref_text,
)
from forgeline_gateway.fine_tuning.store import JobStore
from forgeline_gateway.fine_tuning.training import DatasetFiles, TrainingStage, job_spec
from forgeline_kit.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.converter.v1 import converter_pb2_grpc
from forgeline_proto.registry.v1 import registry_pb2
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from forgeline_registry_client.client import RegistryClient
from forgeline_registry_client.hub import HubImporter, is_hub_id

# `AdapterCheck`, `DatasetFiles` and `StageFailedError` live with the stages that use them; they
# are named here too because the pipeline's callers know them as the pipeline's.
__all__ = [
    "AdapterCheck",
    "DatasetFiles",
    "Pipeline",
    "StageFailedError",
    "fine_tuned_model_name",
]

log = logging.getLogger(__name__)

#: Longest wait between two runs of a stage whose service could not be reached.
_MAX_RETRY_SECONDS = 60.0
_CANCEL_POLL_SECONDS = 0.5
_OWNER = re.compile(r"[^A-Za-z0-9_-]+")


def fine_tuned_model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's form, ``ft:<base>:<owner>:<suffix>:<id>`` (the suffix may be empty)."""
    owner = _OWNER.sub("-", owner).strip("-") or "forgeline"
    return f"ft:{base}:{owner}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


class Pipeline:
    """Creates, drives, resumes and cancels fine-tuning jobs."""

    def __init__(
        self,
        store: JobStore,
        *,
        trainer: trainer_pb2_grpc.TrainerServiceAsyncStub,
        converter: converter_pb2_grpc.ConverterServiceAsyncStub,
        registry: RegistryClient,
        files: DatasetFiles,
        deployments: DeploymentManager,
        organization: str,
        hub: HubImporter | None = None,
        attempts: int = 10,
        retry_seconds: float = 2.0,
        adapter_check: AdapterCheck | None = None,
        quality: QualityCheck | None = None,
        cancel_wait_seconds: float = 60.0,
    ) -> None:
        """
        Args:
            adapter_check: prompts and answers for checking an adapter against its merged
                model; without it every job is served merged.
            quality: the Evals API runs a job's evaluation on; without it no job is evaluated
                (and `deploy.require` cannot be met).
            cancel_wait_seconds: how long a cancel waits for the replica driving the job to
                have cancelled it before answering with the job as it is.
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
        self.cancel_wait_seconds = cancel_wait_seconds
        self.drivers = JobDrivers(store, self._drive_with_retries, self._cancel_here)
        self._retrying = asyncio.Lock()
        self.journal = JobJournal(store)
        # The converter's id of each job's conversion in progress: the converting stage records
        # it, ending the job cancels it.
        conversions: dict[str, str] = {}
        self.finisher = JobFinisher(
            self.journal,
            trainer=trainer,
            converter=converter,
            registry=registry,
            deployments=deployments,
            conversions=conversions,
        )
        self.training = TrainingStage(
            self.journal, trainer=trainer, files=files, finisher=self.finisher
        )
        self.converting = ConvertingStage(
            self.journal, converter=converter, conversions=conversions
        )
        self.serving = ServingChoice(
            self.journal, registry=registry, deployments=deployments, adapter_check=adapter_check
        )
        self.evaluating = EvaluatingStage(
            self.journal,
            registry=registry,
            deployments=deployments,
            serving=self.serving,
            quality=quality,
        )
        self.deploying = DeployingStage(
            self.journal,
            registry=registry,
            deployments=deployments,
            serving=self.serving,
            finisher=self.finisher,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished job no other replica drives, and from then on take over those
        whose replica dies (`JobDrivers`)."""
        await self.drivers.start()

    async def close(self) -> None:
        """Stop driving jobs (they go on under the next replica to take them, this one at its
        next start; remote work keeps running)."""
        await self.drivers.close()

    # --- API ---------------------------------------------------------------------------------

    async def create(self, request: JobRequest, owner: str) -> JobRecord:
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
        spec = job_spec(
            request, job_id, seed, base_ref, template, hyperparameters, training, validation
        )
        # The trainer checks every argument against LLaMA-Factory's own dataclasses and the
        # stage/type/device combination; its refusal is the user's 400.
        await self.trainer.SubmitJob(
            trainer_pb2.SubmitJobRequest(spec=spec, validate_only=True),
            timeout=INTERACTIVE_TIMEOUT,
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
            base_version=ref_text(base_ref),
            template=template,
            hyperparameters=hyperparameters,
        )
        await self.store.run(lambda: self.store.put(job))
        await self.journal.event(job, "info", f"Created fine-tuning job: {job.id}")
        if await self.drivers.take(job.id):  # a new job's lease is free unless a round took it
            self.drivers.spawn(job.id)
        return job

    async def hyperparameters(self, request: JobRequest) -> ResolvedHyperparameters:
        """What `request` would train with, each "auto" decided as `create` would decide it;
        nothing is stored or started.

        Raises:
            InvalidArgument, NotFound: as `create`, for the training file or the model.
        """
        training = await self.files.dataset_file(request.training_file, "training_file")
        return _resolve(request, training, await self._base_version(request.model))

    async def get(self, job_id: str) -> JobRecord:
        return await self.journal.get(job_id)

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
        if not await self.drivers.take(job_id):
            # Another replica drives it: ask it to, and wait while it does.
            await self.store.run(lambda: self.store.request_cancel(job_id))
            return await self._wait_until_finished(job_id)
        await self._cancel_here(job_id)
        return await self.get(job_id)

    async def _cancel_here(self, job_id: str) -> None:
        """Cancel a job this replica holds the lease of: its remote work is stopped and what it
        made removed, then it is `cancelled`."""
        job = await self.get(job_id)
        if job.stage in TERMINAL:
            return
        job = job.model_copy(update={"cancel_requested": True})
        await self.store.run(lambda: self.store.put(job))
        await self.drivers.stop(job_id)
        # Driving a job that asks to be cancelled stops its remote work and rolls it back; the
        # driver goes on if this call is abandoned (a client that hung up).
        await asyncio.shield(self.drivers.spawn(job_id))

    async def _wait_until_finished(self, job_id: str) -> JobRecord:
        """The job once it has ended, or as it is after `cancel_wait_seconds`."""
        deadline = time.monotonic() + self.cancel_wait_seconds
        job = await self.get(job_id)
        while job.stage not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(_CANCEL_POLL_SECONDS)
            job = await self.get(job_id)
        return job

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
            if not await self.drivers.take(job_id):
                raise FailedPrecondition(
                    f"the job {job_id} is being retried by another gateway replica",
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
            job = await self.journal.save(job, **update)
            await self.journal.event(
                job,
                "info",
                f"Retrying the job from the {job.stage.value} stage (retry {job.retries}); what "
                "earlier stages made is reused",
            )
            self.drivers.spawn(job.id)
        return job

    async def checkpoints(self, job: JobRecord) -> list[trainer_pb2.Checkpoint]:
        """The trainer's checkpoints of the job, newest first."""
        if not job.trainer_job_id:
            return []
        answer = await self.trainer.ListCheckpoints(
            trainer_pb2.ListCheckpointsRequest(job_id=job.trainer_job_id, page_size=1000),
            timeout=INTERACTIVE_TIMEOUT,
        )
        return list(answer.checkpoints)

    # --- driving -----------------------------------------------------------------------------

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
                await self.journal.event(
                    job,
                    "warn",
                    f"The {job.stage.value} stage was interrupted: {describe(error)}; retrying "
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
            await self.finisher.finish(job, Stage.CANCELLED, None, best_effort=True)
            return
        unreachable = isinstance(error, Unavailable | DeadlineExceeded | ConnectionError)
        failure = JobFailure(
            code="service_unavailable" if unreachable else "internal",
            message=f"the {job.stage.value} stage was interrupted {attempts} times in a row "
            f"(last: {describe(error)}); what the job made so far is kept: retry it with POST "
            f"/v1/fine_tuning/jobs/{job.id}/retry once the services are back",
        )
        await self.finisher.finish(job, Stage.FAILED, failure, best_effort=True)

    async def _drive(self, job_id: str) -> None:
        steps: dict[Stage, Callable[[JobRecord], Awaitable[JobRecord]]] = {
            Stage.VALIDATING_FILES: self.training.submit,
            Stage.TRAINING: self.training.train,
            Stage.CONVERTING: self.converting.run,
            Stage.EVALUATING: self.evaluating.run,
            Stage.DEPLOYING: self.deploying.run,
        }
        job = await self.get(job_id)
        while job.stage not in TERMINAL:
            if job.cancel_requested:
                job = await self.finisher.finish(job, Stage.CANCELLED, None)
                break
            try:
                job = await steps[job.stage](job)
            except StageFailedError as failure:
                job = await self.finisher.finish(job, Stage.FAILED, failure.error)

    # Tests run these parts of a stage alone, on a job record made for them
    # (tests/gateway/test_adapter_serving_choice.py).

    async def _deploy(self, job: JobRecord) -> JobRecord:
        return await self.deploying.run(job)

    async def _quality_card(
        self, job: JobRecord, rows: list[dict[str, Any]], options: EvalSettings, quantization: str
    ) -> list[ArtifactQuality]:
        return await self.evaluating.quality_card(job, rows, options, quantization)

    # --- helpers -----------------------------------------------------------------------------

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
            return await self.registry.resolve_version(
                registry_pb2.ResolveVersionRequest(
                    reference=model, view=registry_pb2.VERSION_VIEW_BASIC
                ),
                deadline=INTERACTIVE_TIMEOUT,
            )
        except NotFound as error:
            raise InvalidArgument(
                f"the model '{model}' is not in the registry: push it first "
                f"(`forgeline models push DIR {model}`) or pick one of `forgeline models list`",
                field="model",
            ) from error


def _resolve(
    request: JobRequest, training: DatasetFile, base: registry_pb2.Version
) -> ResolvedHyperparameters:
    return resolve(
        request.hyperparameters,
        finetuning_type=request.finetuning_type,
        examples=training.records,
        model_bytes=base.size_bytes,
    )
