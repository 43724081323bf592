"""HTTP surface of `/v1/fine_tuning/jobs` (scope: admin, like OpenAI's fine-tuning permission)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from forgeline_gateway.api.fine_tuning.protocol import (
    CheckpointList,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
    HyperparametersPlan,
)
from forgeline_gateway.api.fine_tuning.serving import FineTuningServing
from forgeline_gateway.errors import ADMIN_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Principal, Scope
from forgeline_kit.errors import FailedPrecondition

__all__ = ["router"]

_admin = requires(Scope.ADMIN)
# Every route needs the admin scope; `create_job` also takes the caller it found (FastAPI runs
# the one dependency once per request).
router = APIRouter(tags=["fine-tuning"], dependencies=[Depends(_admin)])
Limit = Annotated[int, Query(ge=1, le=100)]


def _serving(request: Request) -> FineTuningServing:
    serving: FineTuningServing | None = request.app.state.fine_tuning
    if serving is None:
        raise FailedPrecondition(
            "fine-tuning is not configured on this gateway: set FORGELINE_GATEWAY_REGISTRY_TARGET, "
            "FORGELINE_GATEWAY_TRAINER_TARGET and FORGELINE_GATEWAY_CONVERTER_TARGET"
        )
    return serving


@router.post("/v1/fine_tuning/jobs", responses=ADMIN_ERRORS, summary="Create a fine-tuning job")
async def create_job(
    body: FineTuningJobCreate,
    request: Request,
    principal: Annotated[Principal, Depends(_admin)],
) -> FineTuningJob:
    owner = principal.name if principal.key_id else request.app.state.settings.organization
    return await _serving(request).create(body, owner)


@router.post(
    "/v1/fine_tuning/hyperparameters",
    responses=ADMIN_ERRORS,
    summary="Forgeline: the hyperparameters a job with this body would train with",
)
async def plan_hyperparameters(body: FineTuningJobCreate, request: Request) -> HyperparametersPlan:
    return await _serving(request).hyperparameters(body)


@router.get(
    "/v1/fine_tuning/jobs",
    responses=ADMIN_ERRORS,
    summary="List fine-tuning jobs, newest first",
)
async def list_jobs(
    request: Request, after: str | None = None, limit: Limit = 20
) -> FineTuningJobList:
    return await _serving(request).list(after, limit)


@router.get(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}",
    responses=ADMIN_ERRORS,
    summary="Retrieve a fine-tuning job",
)
async def retrieve_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await _serving(request).retrieve(fine_tuning_job_id)


@router.post(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    responses=ADMIN_ERRORS,
    summary="Cancel a fine-tuning job",
)
async def cancel_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await _serving(request).cancel(fine_tuning_job_id)


@router.post(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/retry",
    responses=ADMIN_ERRORS,
    summary="Retry a failed fine-tuning job from the stage that failed (Forgeline's own)",
    description="Not in OpenAI's API. A failed job runs again from the stage that failed, "
    "reusing what earlier stages registered (a job that failed converting is not trained "
    "again); it keeps its id, and its events go on. A job that is not `failed` is a 400.",
)
async def retry_job(fine_tuning_job_id: str, request: Request) -> FineTuningJob:
    return await _serving(request).retry(fine_tuning_job_id)


@router.get(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
    responses=ADMIN_ERRORS,
    summary="List a job's events, newest first",
)
async def list_events(
    fine_tuning_job_id: str, request: Request, after: str | None = None, limit: Limit = 20
) -> FineTuningJobEventList:
    return await _serving(request).events(fine_tuning_job_id, after, limit)


@router.get(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    responses=ADMIN_ERRORS,
    summary="List a job's checkpoints, newest first",
)
async def list_checkpoints(
    fine_tuning_job_id: str, request: Request, after: str | None = None, limit: Limit = 10
) -> CheckpointList:
    return await _serving(request).checkpoints(fine_tuning_job_id, after, limit)
