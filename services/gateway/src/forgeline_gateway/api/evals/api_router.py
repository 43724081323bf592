"""HTTP surface of the Evals API, `/v1/evals` (scope: admin, like the files and fine-tuning jobs
it works with): what the official SDK's ``client.evals.*`` calls."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from forgeline_gateway.api.evals.protocol import (
    Eval,
    EvalCreate,
    EvalDeleted,
    EvalList,
    EvalUpdate,
    OutputItem,
    OutputItemList,
    Run,
    RunCreate,
    RunDeleted,
    RunList,
)
from forgeline_gateway.api.evals.serving import EvalServing
from forgeline_gateway.errors import ADMIN_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Scope

__all__ = ["router"]

router = APIRouter(tags=["evals"], dependencies=[Depends(requires(Scope.ADMIN))])

Limit = Annotated[int, Query(ge=1, le=100, description="Page size.")]
Order = Annotated[Literal["asc", "desc"], Query(description="By creation time (runs, evals).")]
After = Annotated[str | None, Query(description="The id of the last object of the previous page.")]


def _serving(request: Request) -> EvalServing:
    serving: EvalServing = request.app.state.evals
    return serving


@router.post("/v1/evals", responses=ADMIN_ERRORS, summary="Create an eval")
async def create_eval(body: EvalCreate, request: Request) -> Eval:
    return await _serving(request).create(body)


@router.get("/v1/evals", responses=ADMIN_ERRORS, summary="List evals")
async def list_evals(
    request: Request,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
    order_by: Annotated[Literal["created_at", "updated_at"], Query()] = "created_at",
) -> EvalList:
    return await _serving(request).list(after=after, limit=limit, order=order, order_by=order_by)


@router.get("/v1/evals/{eval_id}", responses=ADMIN_ERRORS, summary="Get an eval")
async def retrieve_eval(eval_id: str, request: Request) -> Eval:
    return await _serving(request).retrieve(eval_id)


@router.post(
    "/v1/evals/{eval_id}", responses=ADMIN_ERRORS, summary="Rename an eval or set its metadata"
)
async def update_eval(eval_id: str, body: EvalUpdate, request: Request) -> Eval:
    return await _serving(request).update(eval_id, body)


@router.delete("/v1/evals/{eval_id}", responses=ADMIN_ERRORS, summary="Delete an eval and its runs")
async def delete_eval(eval_id: str, request: Request) -> EvalDeleted:
    return await _serving(request).delete(eval_id)


@router.post(
    "/v1/evals/{eval_id}/runs",
    responses=ADMIN_ERRORS,
    summary="Start a run of an eval",
    description="The data source is checked whole first (rows against the item schema, every "
    "template against every row, the model deployed); the run then goes on in the background.",
)
async def create_run(eval_id: str, body: RunCreate, request: Request) -> Run:
    return await _serving(request).create_run(eval_id, body)


@router.get("/v1/evals/{eval_id}/runs", responses=ADMIN_ERRORS, summary="List an eval's runs")
async def list_runs(
    eval_id: str,
    request: Request,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Annotated[
        Literal["queued", "in_progress", "completed", "canceled", "failed"] | None, Query()
    ] = None,
) -> RunList:
    return await _serving(request).list_runs(
        eval_id, after=after, limit=limit, order=order, status=status
    )


@router.get("/v1/evals/{eval_id}/runs/{run_id}", responses=ADMIN_ERRORS, summary="Get a run")
async def retrieve_run(eval_id: str, run_id: str, request: Request) -> Run:
    return await _serving(request).retrieve_run(eval_id, run_id)


@router.post(
    "/v1/evals/{eval_id}/runs/{run_id}/cancel",
    responses=ADMIN_ERRORS,
    summary="Cancel a run",
    description="A queued or in_progress run ends `canceled`, its output items kept (the "
    "official SDK's path; `POST /v1/evals/{eval_id}/runs/{run_id}`, the API reference's, does "
    "the same).",
)
@router.post(
    "/v1/evals/{eval_id}/runs/{run_id}",
    responses=ADMIN_ERRORS,
    summary="Cancel a run",
    include_in_schema=False,
)
async def cancel_run(eval_id: str, run_id: str, request: Request) -> Run:
    return await _serving(request).cancel_run(eval_id, run_id)


@router.delete("/v1/evals/{eval_id}/runs/{run_id}", responses=ADMIN_ERRORS, summary="Delete a run")
async def delete_run(eval_id: str, run_id: str, request: Request) -> RunDeleted:
    return await _serving(request).delete_run(eval_id, run_id)


@router.get(
    "/v1/evals/{eval_id}/runs/{run_id}/output_items",
    responses=ADMIN_ERRORS,
    summary="List a run's output items (one per row, in row order)",
)
async def list_output_items(
    eval_id: str,
    run_id: str,
    request: Request,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Annotated[Literal["pass", "fail", "error"] | None, Query()] = None,
) -> OutputItemList:
    return await _serving(request).list_outputs(
        eval_id, run_id, after=after, limit=limit, order=order, status=status
    )


@router.get(
    "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
    responses=ADMIN_ERRORS,
    summary="Get an output item",
)
async def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, request: Request
) -> OutputItem:
    return await _serving(request).retrieve_output(eval_id, run_id, output_item_id)
