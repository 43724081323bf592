"""Between `/v1/fine_tuning/jobs`'s bodies and the pipeline's own records: a request body
becomes the `JobRequest` a job stores, a stored `JobRecord` becomes OpenAI's job object.

The pipeline (`forgeline_gateway.fine_tuning`) never sees an API model, so the API's fields can
change without touching a stored job: only this module follows them.
"""

from __future__ import annotations

from forgeline_gateway.api.fine_tuning.protocol import (
    DpoHyperparameters,
    DpoMethod,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    JobError,
    MethodView,
    SupervisedHyperparameters,
    SupervisedMethod,
)
from forgeline_gateway.fine_tuning.auto import RequestedHyperparameters
from forgeline_gateway.fine_tuning.records import (
    DeployGate,
    DeploySettings,
    EvalSettings,
    EventRecord,
    JobFailure,
    JobRecord,
    JobRequest,
    LoraSettings,
)

__all__ = ["event_id", "event_object", "job_error", "job_object", "job_request"]


def job_request(body: FineTuningJobCreate) -> JobRequest:
    """What a job created from `body` stores: the request, with what it leaves implicit (the
    method, the training stage, whether it is evaluated) decided."""
    options = body.forgeline
    hyper = body.effective_hyperparameters()
    lora = options.lora
    deploy = options.deploy
    require = deploy.require
    evaluation = body.evaluation()
    return JobRequest(
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed,
        metadata=dict(body.metadata) if body.metadata is not None else None,
        method=body.method_type(),
        training_stage=body.training_stage(),
        hyperparameters=RequestedHyperparameters(
            n_epochs=hyper.n_epochs,
            batch_size=hyper.batch_size,
            learning_rate_multiplier=hyper.learning_rate_multiplier,
            beta=hyper.beta if isinstance(hyper, DpoHyperparameters) else None,
        ),
        finetuning_type=options.finetuning_type,
        lora=LoraSettings(
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target=lora.target,
            additional_target=lora.additional_target,
        ),
        arguments=dict(options.arguments),
        quantizations=tuple(options.quantizations),
        deploy=DeploySettings(
            enabled=deploy.enabled,
            backend=deploy.backend,
            quantization=deploy.quantization,
            context_size=deploy.context_size,
            serve=deploy.serve,
            alias=deploy.alias,
            require=(
                DeployGate(
                    grader=require.grader, min=require.min, beat_base_by=require.beat_base_by
                )
                if require is not None
                else None
            ),
        ),
        evaluation=(
            EvalSettings(
                graders=tuple(evaluation.graders),
                max_rows=evaluation.max_rows,
                max_tokens=evaluation.max_tokens,
                pass_threshold=evaluation.pass_threshold,
            )
            if evaluation is not None
            else None
        ),
    )


def job_error(failure: JobFailure) -> JobError:
    return JobError(code=failure.code, message=failure.message, param=failure.param)


def job_object(job: JobRecord, organization: str) -> FineTuningJob:
    """The ``fine_tuning.job`` object of a stored job."""
    request = job.request
    hyper = job.resolved_hyperparameters()
    # Like OpenAI's, the job shows the numbers "auto" became, in `method` too.
    chosen = {
        "n_epochs": hyper.n_epochs,
        "batch_size": hyper.batch_size,
        "learning_rate_multiplier": hyper.learning_rate_multiplier,
    }
    method = (
        MethodView(
            type="dpo",
            dpo=DpoMethod(hyperparameters=DpoHyperparameters(**chosen, beta=hyper.beta or "auto")),
        )
        if request.method == "dpo"
        else MethodView(
            type="supervised",
            supervised=SupervisedMethod(hyperparameters=SupervisedHyperparameters(**chosen)),
        )
    )
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=job_error(job.error) if job.error is not None else None,
        # A reward model is registered, never served, and a job whose deploy.require was
        # missed deployed nothing: there is no model to ask.
        fine_tuned_model=(
            job.fine_tuned_model
            if job.status == "succeeded"
            and request.training_stage != "rm"
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
        organization_id=organization,
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
            "finetuning_type": request.finetuning_type,
            "training_stage": request.training_stage,
            "evaluated": request.evaluation is not None,
        },
    )


def event_id(job: JobRecord, sequence: int) -> str:
    return f"ftevent-{job.id.removeprefix('ftjob-')}-{sequence}"


def event_object(job: JobRecord, event: EventRecord) -> FineTuningJobEvent:
    """The ``fine_tuning.job.event`` object of a stored event of `job`."""
    return FineTuningJobEvent(
        id=event_id(job, event.sequence),
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )
