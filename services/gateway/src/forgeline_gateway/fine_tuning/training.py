"""The validating_files and training stages: a job submitted to the trainer, then its training
followed to the end, each trainer event mirrored as an OpenAI event of the job.

The trainer does the work (LLaMA-Factory: train, merge, register the adapter and the merged
model) and runs a killed run again itself; the pipeline only watches. The trainer's job is
keyed by the job's request id and watched from the last event seen, so after a restart both
re-attach instead of training twice or repeating events.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

from forgeline_gateway.fine_tuning.auto import ResolvedHyperparameters
from forgeline_gateway.fine_tuning.finishing import JobFinisher
from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.plan import DatasetFile, trainer_spec
from forgeline_gateway.fine_tuning.records import JobFailure, JobRecord, JobRequest, Stage
from forgeline_gateway.fine_tuning.stage_support import (
    StageFailedError,
    job_error,
    ref_text,
    retry_message,
    rpc_stream,
    version_ref,
)
from forgeline_kit.errors import InvalidArgument, NotFound
from forgeline_proto.common.v1 import common_pb2
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc

__all__ = ["DatasetFiles", "TrainingStage", "job_spec"]


class DatasetFiles(Protocol):
    """Resolves uploaded file ids to datasets in the registry (the Files API owns them)."""

    async def dataset_file(self, file_id: str, param: str) -> DatasetFile:
        """The dataset of `file_id`; a `ForgelineError` naming `param` when there is none."""
        ...


def job_spec(
    request: JobRequest,
    job_id: str,
    seed: int,
    base: common_pb2.VersionRef,
    template: str | None,
    hyperparameters: ResolvedHyperparameters,
    training: DatasetFile,
    validation: DatasetFile | None,
) -> trainer_pb2.JobSpec:
    """The trainer's spec of the job `job_id`, its metadata naming the job."""
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


class TrainingStage:
    """Submits jobs to the trainer and follows their training."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        trainer: trainer_pb2_grpc.TrainerServiceAsyncStub,
        files: DatasetFiles,
        finisher: JobFinisher,
    ) -> None:
        """
        Args:
            finisher: ends a job that trained a reward model, which is neither converted nor
                deployed.
        """
        self.journal = journal
        self.trainer = trainer
        self.files = files
        self.finisher = finisher

    async def submit(self, job: JobRecord) -> JobRecord:
        """The validating_files stage: the job's files resolved and the job submitted."""
        request = job.request
        training = await self.files.dataset_file(request.training_file, "training_file")
        validation = (
            await self.files.dataset_file(request.validation_file, "validation_file")
            if request.validation_file
            else None
        )
        # The base version was pinned when the job was created: a version pushed since then
        # must not change what this job trains on.
        base = version_ref(job.base_version)
        spec = job_spec(
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
                JobFailure(code="invalid_request", message=error.message, param=error.field)
            ) from error
        return await self.journal.save(
            job,
            stage=Stage.TRAINING,
            trainer_job_id=trainer_job.id,
            trainer_state=trainer_pb2.JobState.Name(trainer_job.state).removeprefix("JOB_STATE_"),
        )

    async def train(self, job: JobRecord) -> JobRecord:
        """The training stage: the trainer's job watched to its end."""
        watch = self.trainer.WatchJob(
            trainer_pb2.WatchJobRequest(
                job_id=job.trainer_job_id, after_sequence=job.trainer_last_sequence
            )
        )
        async for event in rpc_stream(watch):
            job = await self._mirror(job, event)
        trainer_job = await self.trainer.GetJob(
            trainer_pb2.GetJobRequest(job_id=job.trainer_job_id)
        )
        if trainer_job.state == trainer_pb2.JOB_STATE_FAILED:
            raise StageFailedError(job_error(trainer_job.error, "training_failed"))
        if trainer_job.state == trainer_pb2.JOB_STATE_CANCELLED:
            return await self.journal.save(job, cancel_requested=True)
        if trainer_job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            # The stream ended early (the trainer restarted): watch again from where we are.
            return job
        result = trainer_job.result
        outputs = job.outputs.model_copy(
            update={
                "adapter": ref_text(result.adapter) if result.HasField("adapter") else None,
                "merged": ref_text(result.merged) if result.HasField("merged") else None,
                "trained_model": (
                    ref_text(result.trained_model) if result.HasField("trained_model") else None
                ),
            }
        )
        trained_tokens = result.trained_tokens or job.trained_tokens
        if job.request.training_stage == "rm":
            job = await self.journal.save(
                job, trainer_state="SUCCEEDED", outputs=outputs, trained_tokens=trained_tokens
            )
            await self.journal.event(
                job,
                "info",
                f"Training finished. A reward model scores answers instead of writing them: it "
                f"is registered as {outputs.adapter} (adapter and value head), and not converted "
                "to GGUF or deployed",
            )
            return await self.finisher.finish(job, Stage.SUCCEEDED, None)
        await self.journal.event(job, "info", "Training finished; converting the model to GGUF")
        return await self.journal.save(
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
                await self.journal.event(job, level, event.message or f"Trainer: {state.lower()}")
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
            await self.journal.event(job, "info", message, kind="metrics", data=data)
        elif kind == "checkpoint":
            await self.journal.event(job, "info", event.message or "Checkpoint saved")
        elif kind == "error":
            await self.journal.event(job, "error", event.error.message or event.message)
        elif kind == "retry":
            # A LLaMA-Factory run killed by a signal, started again by the trainer.
            await self.journal.event(job, "warn", event.message or retry_message(event.retry))
        # Log lines stay in the trainer's own event history: they are not OpenAI events.
        return await self.journal.save(job, **update)
