"""HTTP surface of the Files API, `/v1/files` (scope: admin): what the official SDK's
``client.files.*`` calls."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Scope as AsgiScope

from forgeline_gateway.api.files.protocol import FileDeleted, FileList, FileObject, FilePreview
from forgeline_gateway.api.files.serving import FileServing
from forgeline_gateway.errors import ADMIN_ERRORS
from forgeline_gateway.security.auth import requires
from forgeline_gateway.security.keys import Scope

__all__ = ["counts_its_own_body", "router"]

router = APIRouter(tags=["files"], dependencies=[Depends(requires(Scope.ADMIN))])

# The upload is parsed by the serving layer as it streams in, so FastAPI does not see a form
# parameter; this documents it.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["fine-tune", "evals"]},
                    },
                }
            }
        },
    }
}


def counts_its_own_body(scope: AsgiScope) -> bool:
    """Whether a request is an upload, whose body the Files API reads as it arrives and limits
    itself (``MAX_FILE_BYTES``) rather than the gateway's JSON body limit."""
    return scope.get("method") == "POST" and scope.get("path") == "/v1/files"


def _serving(request: Request) -> FileServing:
    serving: FileServing = request.app.state.files
    return serving


@router.post(
    "/v1/files",
    responses=ADMIN_ERRORS,
    summary="Upload a fine-tuning or eval file",
    description="Purpose `fine-tune`: OpenAI chat or preference JSONL, or alpaca/sharegpt "
    'JSON(L); purpose `evals`: JSONL rows `{"item": {...}, "sample": {...}}`. Checked '
    "whole (errors name the line and field), then kept in the registry.",
    openapi_extra=_UPLOAD_BODY,
)
async def create_file(request: Request) -> FileObject:
    return await _serving(request).create(request)


@router.get("/v1/files", responses=ADMIN_ERRORS, summary="List files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = Query(None, description="The id of the last file of the previous page."),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = Query("desc", description="By `created_at`."),
) -> FileList:
    return await _serving(request).list(purpose=purpose, after=after, limit=limit, order=order)


@router.get("/v1/files/{file_id}", responses=ADMIN_ERRORS, summary="Show a file")
async def retrieve_file(file_id: str, request: Request) -> FileObject:
    return await _serving(request).retrieve(file_id)


@router.get(
    "/v1/files/{file_id}/content",
    responses={
        200: {
            "description": "The file's bytes, as uploaded.",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **ADMIN_ERRORS,
    },
    response_class=StreamingResponse,
    summary="Download a file's bytes",
)
async def file_content(file_id: str, request: Request) -> StreamingResponse:
    return await _serving(request).content(file_id)


@router.get(
    "/v1/files/{file_id}/preview",
    responses=ADMIN_ERRORS,
    summary="Forgeline: the first records as the model will be trained on them",
    description="Each record rendered through `model`'s chat template (from the registry), "
    "in segments marked `trained` where LLaMA-Factory computes the loss (assistant turns and "
    "their end-of-turn text; everything with `train_on_prompt`, only the last answer with "
    "`mask_history`).",
)
async def preview_file(
    file_id: str,
    request: Request,
    model: str = Query(..., min_length=1, max_length=256, description="A registry model."),
    limit: int = Query(5, ge=1, le=50),
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> FilePreview:
    return await _serving(request).preview(
        file_id,
        model=model,
        limit=limit,
        train_on_prompt=train_on_prompt,
        mask_history=mask_history,
    )


@router.delete("/v1/files/{file_id}", responses=ADMIN_ERRORS, summary="Delete a file")
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    return await _serving(request).delete(file_id)
