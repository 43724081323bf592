"""How a fine-tuning job ends: succeeded, failed or cancelled, and what happens to what it made.

A job that did not succeed first stops its remote work (the trainer's job, the converter's
conversion). A cancelled job is then rolled back: its deployments and every version it
registered are removed, so it leaves nothing behind. A failed job keeps its versions, labelled
``fine_tuning_job_status=failed``, so that a retry can reuse them (the label comes off once a
retry succeeds).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from google.protobuf import field_mask_pb2

from forgeline_gateway.deployments.manager import DeploymentManager
from forgeline_gateway.fine_tuning.job_deployments import adapter_check_name
from forgeline_gateway.fine_tuning.journal import JobJournal
from forgeline_gateway.fine_tuning.records import TERMINAL, JobFailure, JobRecord, Stage
from forgeline_gateway.fine_tuning.stage_support import INTERACTIVE_TIMEOUT, version_ref
from forgeline_kit.errors import FailedPrecondition, ForgelineError, NotFound
from forgeline_proto.converter.v1 import converter_pb2, converter_pb2_grpc
from forgeline_proto.registry.v1 import registry_pb2
from forgeline_proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from forgeline_registry_client.client import RegistryClient

__all__ = ["FAILED_LABEL", "JobFinisher"]

log = logging.getLogger(__name__)

#: The label put on what a failed job registered (removed when a retry succeeds).
FAILED_LABEL = "fine_tuning_job_status"


class JobFinisher:
    """Ends jobs: stops their remote work, then removes or labels what they made."""

    def __init__(
        self,
        journal: JobJournal,
        *,
        trainer: trainer_pb2_grpc.TrainerServiceAsyncStub,
        converter: converter_pb2_grpc.ConverterServiceAsyncStub,
        registry: RegistryClient,
        deployments: DeploymentManager,
        conversions: dict[str, str],
    ) -> None:
        """
        Args:
            conversions: the converter's id of each job's conversion in progress, as the
                converting stage records it (the one to cancel).
        """
        self.journal = journal
        self.trainer = trainer
        self.converter = converter
        self.registry = registry
        self.deployments = deployments
        self.conversions = conversions

    async def finish(
        self, job: JobRecord, stage: Stage, error: JobFailure | None, *, best_effort: bool = False
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
        job = await self.journal.save(
            job, stage=stage, error=error, finished_at=int(time.time()), **update
        )
        if stage is Stage.SUCCEEDED:
            await self.journal.event(
                job, "info", f"New fine-tuned model created: {job.fine_tuned_model}"
            )
            await self.journal.event(job, "info", "The job has successfully completed")
        elif stage is Stage.CANCELLED:
            await self.journal.event(job, "info", "The job was cancelled; nothing it made was kept")
        else:
            assert error is not None
            await self.journal.event(job, "error", f"The job failed: {error.message}")
            kept = job.outputs.registered()
            if kept:
                where = (job.failed_stage or Stage.VALIDATING_FILES).value
                await self.journal.event(
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
                    timeout=INTERACTIVE_TIMEOUT,
                )
            except FailedPrecondition:  # it had already ended
                trainer_job = await self.trainer.GetJob(
                    trainer_pb2.GetJobRequest(job_id=job.trainer_job_id),
                    timeout=INTERACTIVE_TIMEOUT,
                )
            state = trainer_pb2.JobState.Name(trainer_job.state).removeprefix("JOB_STATE_")
            job = job.model_copy(update={"trainer_state": state})
        conversion_id = self.conversions.get(job.id)
        if conversion_id and job.stage is Stage.CONVERTING:
            with contextlib.suppress(FailedPrecondition):
                await self.converter.CancelConversion(
                    converter_pb2.CancelConversionRequest(conversion_id=conversion_id),
                    timeout=INTERACTIVE_TIMEOUT,
                )
        return job

    async def _label_outputs(self, job: JobRecord, status: str | None) -> None:
        """Set (or, with None, remove) the ``fine_tuning_job_status`` label on every version the
        job registered; best effort: a version deleted or a registry out of reach is logged."""
        for reference in job.outputs.registered():
            ref = version_ref(reference)
            try:
                version = await self.registry.get_version(
                    registry_pb2.GetVersionRequest(
                        model=ref.model, version=ref.version, view=registry_pb2.VERSION_VIEW_BASIC
                    ),
                    deadline=INTERACTIVE_TIMEOUT,
                )
                labels = dict(version.labels)
                if labels.get(FAILED_LABEL) == status:
                    continue
                if status is None:
                    labels.pop(FAILED_LABEL, None)
                else:
                    labels[FAILED_LABEL] = status
                await self.registry.update_version(
                    registry_pb2.UpdateVersionRequest(
                        version=registry_pb2.Version(
                            model=ref.model, number=ref.version, labels=labels
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
                    ),
                    deadline=INTERACTIVE_TIMEOUT,
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
            [
                job.outputs.deployment or job.fine_tuned_model,
                job.fine_tuned_model,
                adapter_check_name(job),
            ]
        ):
            with contextlib.suppress(NotFound):
                await self.deployments.delete(name)
        for reference in job.outputs.registered():
            ref = version_ref(reference)
            with contextlib.suppress(NotFound):
                await self.registry.delete_version(
                    registry_pb2.DeleteVersionRequest(
                        model=ref.model, version=ref.version, force=True
                    )
                )
            await self.journal.event(job, "info", f"Removed {reference} from the registry")
