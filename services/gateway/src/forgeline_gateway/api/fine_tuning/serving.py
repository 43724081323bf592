"""Serving `/v1/fine_tuning/jobs` over the pipeline: OpenAI objects from pipeline records."""

from __future__ import annotations

from forgeline_gateway.api.fine_tuning.protocol import (
    Checkpoint,
    CheckpointList,
    CheckpointMetrics,
    DpoHyperparameters,
    DpoMethod,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    Hyperparameters,
    HyperparametersPlan,
    MethodView,
    SupervisedHyperparameters,
    SupervisedMethod,
)
from forgeline_gateway.fine_tuning.pipeline import Pipeline
from forgeline_gateway.fine_tuning.records import EventRecord, JobRecord
from forgeline_kit.errors import InvalidArgument

__all__ = ["FineTuningServing"]


class FineTuningServing:
    """Create, list, retrieve, cancel and retry jobs; list their events and checkpoints."""

    def __init__(self, pipeline: Pipeline, organization: str) -> None:
        self.pipeline = pipeline
        self.organization = organization

    async def create(self, body: FineTuningJobCreate, owner: str) -> FineTuningJob:
        return self._view(await self.pipeline.create(body, owner))

    async def hyperparameters(self, body: FineTuningJobCreate) -> HyperparametersPlan:
        chosen = await self.pipeline.hyperparameters(body)
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
        return FineTuningJobEventList(data=[_event(job, e) for e in events], has_more=more)

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
        request = job.request
        hyper = job.resolved_hyperparameters()
        # Like OpenAI's, the job shows the numbers "auto" became, in `method` too.
        chosen = {
            "n_epochs": hyper.n_epochs,
            "batch_size": hyper.batch_size,
            "learning_rate_multiplier": hyper.learning_rate_multiplier,
        }
        kind = request.method_type()
        method = (
            MethodView(
                type="dpo",
                dpo=DpoMethod(
                    hyperparameters=DpoHyperparameters(**chosen, beta=hyper.beta or "auto")
                ),
            )
            if kind == "dpo"
            else MethodView(
                type="supervised",
                supervised=SupervisedMethod(hyperparameters=SupervisedHyperparameters(**chosen)),
            )
        )
        return FineTuningJob(
            id=job.id,
            created_at=job.created_at,
            error=job.error,
            # A reward model is registered, never served, and a job whose deploy.require was
            # missed deployed nothing: there is no model to ask.
            fine_tuned_model=(
                job.fine_tuned_model
                if job.status == "succeeded"
                and request.training_stage() != "rm"
                and job.outputs.gate != "missed"
                else None
            ),
            finished_at=job.finished_at,
            hyperparameters=Hyperparameters(
                batch_size=hyper.batch_size,
                learning_rate_multiplier=hyper.learning_rate_multiplier,
                n_epochs=hyper.n_epochs,
            ),
            model=request.model,
            organization_id=self.organization,
            seed=job.seed,
            status=job.status,
            trained_tokens=job.trained_tokens if job.status == "succeeded" else None,
            training_file=request.training_file,
            validation_file=request.validation_file,
            estimated_finish=job.estimated_finish if job.status == "running" else None,
            metadata=request.metadata,
            method=method,
            user_provided_suffix=request.suffix,
            forgeline={
                "stage": job.stage.value,
                "trainer_job_id": job.trainer_job_id or None,
                "trainer_state": job.trainer_state.lower() or None,
                "outputs": job.outputs.model_dump(exclude_none=True),
                "failed_stage": job.failed_stage.value if job.failed_stage else None,
                "retries": job.retries,
                "finetuning_type": request.forgeline.finetuning_type,
                "training_stage": request.training_stage(),
                "evaluated": request.evaluation() is not None,
            },
        )


def _event_id(job: JobRecord, sequence: int) -> str:
    return f"ftevent-{job.id.removeprefix('ftjob-')}-{sequence}"


def _event_sequence(job: JobRecord, event_id: str) -> int:
    prefix = _event_id(job, 0)[:-1]
    number = event_id.removeprefix(prefix)
    if not event_id.startswith(prefix) or not number.isdigit():
        raise InvalidArgument(f"'{event_id}' is not an event of job {job.id}", field="after")
    return int(number)


def _event(job: JobRecord, event: EventRecord) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=_event_id(job, event.sequence),
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )
