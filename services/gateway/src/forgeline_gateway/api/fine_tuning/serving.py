"""Serving `/v1/fine_tuning/jobs` over the pipeline: requests into the pipeline's own records,
OpenAI objects from them (`convert.py`)."""

from __future__ import annotations

from forgeline_gateway.api.fine_tuning.convert import (
    event_id,
    event_object,
    job_object,
    job_request,
)
from forgeline_gateway.api.fine_tuning.protocol import (
    Checkpoint,
    CheckpointList,
    CheckpointMetrics,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
    HyperparametersPlan,
)
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.records import JobRecord
from forgeline_kit.errors import InvalidArgument

__all__ = ["FineTuningServing"]


class FineTuningServing:
    """Create, list, retrieve, cancel and retry jobs; list their events and checkpoints."""

    def __init__(self, pipeline: Pipeline, organization: str) -> None:
        self.pipeline = pipeline
        self.organization = organization

    async def create(self, body: FineTuningJobCreate, owner: str) -> FineTuningJob:
        return self._view(await self.pipeline.create(job_request(body), owner))

    async def hyperparameters(self, body: FineTuningJobCreate) -> HyperparametersPlan:
        chosen = await self.pipeline.hyperparameters(job_request(body))
        return HyperparametersPlan(
            n_epochs=chosen.n_epochs,
            batch_size=chosen.batch_size,
            learning_rate_multiplier=chosen.learning_rate_multiplier,
            beta=chosen.beta,
            arguments=chosen.arguments(),
        )

    async def retrieve(self, job_id: str) -> FineTuningJob:
        return self._view(await self.pipeline.get(job_id))

    async def cancel(self, job_id: str) -> FineTuningJob:
        return self._view(await self.pipeline.cancel(job_id))

    async def retry(self, job_id: str) -> FineTuningJob:
        return self._view(await self.pipeline.retry(job_id))

    async def list(self, after: str | None, limit: int) -> FineTuningJobList:
        store = self.pipeline.store
        jobs, more = await store.run(lambda: store.page(after, limit))
        return FineTuningJobList(data=[self._view(job) for job in jobs], has_more=more)

    async def events(self, job_id: str, after: str | None, limit: int) -> FineTuningJobEventList:
        job = await self.pipeline.get(job_id)
        before = _event_sequence(job, after) if after else None
        store = self.pipeline.store
        events, more = await store.run(lambda: store.events(job.id, before, limit))
        return FineTuningJobEventList(data=[event_object(job, e) for e in events], has_more=more)

    async def checkpoints(self, job_id: str, after: str | None, limit: int) -> CheckpointList:
        job = await self.pipeline.get(job_id)
        checkpoints = await self.pipeline.checkpoints(job)
        views = [
            Checkpoint(
                id=c.id,
                created_at=c.create_time.seconds,
                fine_tuned_model_checkpoint=f"{job.fine_tuned_model}:ckpt-step-{c.step}",
                fine_tuning_job_id=job.id,
                metrics=CheckpointMetrics(
                    step=float(c.step),
                    train_loss=c.metrics.get("train_loss", c.metrics.get("loss")),
                    valid_loss=c.metrics.get("eval_loss"),
                    full_valid_loss=c.metrics.get("full_valid_loss"),
                ),
                step_number=c.step,
            )
            for c in checkpoints
        ]
        if after:
            ids = [v.id for v in views]
            if after not in ids:
                raise InvalidArgument(f"no checkpoint '{after}' in job {job.id}", field="after")
            views = views[ids.index(after) + 1 :]
        page = views[:limit]
        return CheckpointList(
            data=page,
            has_more=len(views) > limit,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )

    def _view(self, job: JobRecord) -> FineTuningJob:
        return job_object(job, self.organization)


def _event_sequence(job: JobRecord, after: str) -> int:
    prefix = event_id(job, 0)[:-1]
    number = after.removeprefix(prefix)
    if not after.startswith(prefix) or not number.isdigit():
        raise InvalidArgument(f"'{after}' is not an event of job {job.id}", field="after")
    return int(number)
