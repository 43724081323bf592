"""Serving the Evals API: requests into the evals domain's plain values, records back into
OpenAI's shapes; and the domain's `Sampler` over the gateway's proxy (each row's chat
completion is routed, failed over and counted as a client's, under ``endpoint="evals"``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from forgeline_gateway.api.chat.protocol import ChatCompletion, ChatCompletionRequest
from forgeline_gateway.api.evals.protocol import (
    ApiError,
    CriterionResult,
    CustomDataSourceSchema,
    Eval,
    EvalCreate,
    EvalDeleted,
    EvalList,
    EvalUpdate,
    GraderResult,
    Message,
    ModelUsage,
    OutputItem,
    OutputItemList,
    ResultCounts,
    Run,
    RunCreate,
    RunDeleted,
    RunList,
    Sample,
    SampleUsage,
)
from forgeline_gateway.backends.base import Endpoint
from forgeline_gateway.evals.files import FileRows
from forgeline_gateway.evals.records import EvalRecord, OutputRecord, RunError, RunRecord
from forgeline_gateway.evals.sampling import Completion
from forgeline_gateway.evals.service import EvalService, data_source_schema
from forgeline_gateway.evals.store import EvalStore
from forgeline_gateway.files.service import FileService
from forgeline_gateway.routing.proxy import Proxy
from forgeline_gateway.routing.router import Router
from forgeline_gateway.settings import GatewaySettings

__all__ = ["EvalServing", "ProxySampler"]

Order = Literal["asc", "desc"]


class ProxySampler:
    """Chat completions for eval runs (or the gateway's other own work), through the gateway's
    proxy, counted in its metrics under the endpoint `label`."""

    def __init__(self, proxy: Proxy, router: Router, *, label: str = "evals") -> None:
        self.proxy = proxy
        self.router = router
        self.label = label

    def check_model(self, model: str) -> None:
        self.router.get(model)

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> Completion:
        body = ChatCompletionRequest.model_validate(
            {"model": model, "messages": messages, **params}
        )
        answer = await self.proxy.complete(Endpoint.CHAT, body, ChatCompletion, label=self.label)
        choice = answer.choices[0] if answer.choices else None
        message = choice.message if choice else None
        usage = answer.usage
        details = usage.prompt_tokens_details if usage else None
        return Completion(
            text=(message.content if message else None) or "",
            model=answer.model,
            finish_reason=choice.finish_reason if choice else None,
            tool_calls=[
                call.model_dump(mode="json") for call in (message.tool_calls or [])
            ] if message else [],
            choices=[c.model_dump(mode="json", exclude_none=True) for c in answer.choices],
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0,
            cached_tokens=(details.cached_tokens or 0) if details else 0,
        )  # fmt: skip


class EvalServing:
    """The Evals API over an `EvalService`."""

    def __init__(self, service: EvalService) -> None:
        self.service = service

    @classmethod
    def open(
        cls, settings: GatewaySettings, proxy: Proxy, router: Router, files: FileService
    ) -> EvalServing:
        """The Evals API of a gateway: its tables in the gateway's database, its runs executed
        under this replica's leases."""
        store = EvalStore.open(
            settings.database_url,
            holder=settings.replica_name(),
            lease_seconds=settings.lease_seconds,
        )
        return cls(EvalService(store, ProxySampler(proxy, router), FileRows(files)))

    async def start(self) -> None:
        """Resume the runs a previous gateway left unfinished."""
        await self.service.start()

    async def close(self) -> None:
        """Stop the runs under way (the next gateway resumes them) and close the store."""
        await self.service.close()
        self.service.store.close()

    # --- evals ----------------------------------------------------------------------------

    async def create(self, body: EvalCreate) -> Eval:
        record = await self.service.create_eval(
            name=body.name,
            metadata=body.metadata,
            data_source_config=body.data_source_config.model_dump(mode="json"),
            testing_criteria=[c.model_dump(mode="json") for c in body.testing_criteria],
        )
        return _eval(record)

    async def list(self, *, after: str | None, limit: int, order: Order, order_by: str) -> EvalList:
        by: Literal["created_at", "updated_at"] = (
            "updated_at" if order_by == "updated_at" else "created_at"
        )
        records, more = await self.service.list_evals(
            after=after, limit=limit, order=order, order_by=by
        )
        data = [_eval(r) for r in records]
        return EvalList(data=data, **_page(data), has_more=more)

    async def retrieve(self, eval_id: str) -> Eval:
        return _eval(await self.service.get_eval(eval_id))

    async def update(self, eval_id: str, body: EvalUpdate) -> Eval:
        changes = body.model_dump(include=body.model_fields_set)
        return _eval(await self.service.update_eval(eval_id, changes))

    async def delete(self, eval_id: str) -> EvalDeleted:
        await self.service.delete_eval(eval_id)
        return EvalDeleted(deleted=True, eval_id=eval_id)

    # --- runs -----------------------------------------------------------------------------

    async def create_run(self, eval_id: str, body: RunCreate) -> Run:
        run = await self.service.create_run(
            eval_id,
            name=body.name,
            metadata=body.metadata,
            data_source=body.data_source.model_dump(mode="json", exclude_none=True),
        )
        return _run(run)

    async def list_runs(
        self, eval_id: str, *, after: str | None, limit: int, order: Order, status: str | None
    ) -> RunList:
        records, more = await self.service.list_runs(
            eval_id, after=after, limit=limit, order=order, status=status
        )
        data = [_run(r) for r in records]
        return RunList(data=data, **_page(data), has_more=more)

    async def retrieve_run(self, eval_id: str, run_id: str) -> Run:
        return _run(await self.service.get_run(eval_id, run_id))

    async def cancel_run(self, eval_id: str, run_id: str) -> Run:
        return _run(await self.service.cancel_run(eval_id, run_id))

    async def delete_run(self, eval_id: str, run_id: str) -> RunDeleted:
        await self.service.delete_run(eval_id, run_id)
        return RunDeleted(deleted=True, run_id=run_id)

    # --- output items -----------------------------------------------------------------------

    async def list_outputs(
        self,
        eval_id: str,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        order: Order,
        status: str | None,
    ) -> OutputItemList:
        records, more = await self.service.list_outputs(
            eval_id, run_id, after=after, limit=limit, order=order, status=status
        )
        data = [_output(r) for r in records]
        return OutputItemList(data=data, **_page(data), has_more=more)

    async def retrieve_output(self, eval_id: str, run_id: str, output_id: str) -> OutputItem:
        return _output(await self.service.get_output(eval_id, run_id, output_id))


def _page(data: list[Any]) -> dict[str, str | None]:
    return {
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


def _eval(record: EvalRecord) -> Eval:
    return Eval(
        id=record.id,
        name=record.name,
        created_at=record.created_at,
        metadata=record.metadata,
        data_source_config=CustomDataSourceSchema(
            schema_=data_source_schema(record.data_source_config)
        ),
        testing_criteria=[dict(spec) for spec in record.testing_criteria],
    )


def _error(error: RunError | None) -> ApiError | None:
    return ApiError(code=error.code, message=error.message) if error else None


def _run(run: RunRecord) -> Run:
    return Run(
        id=run.id,
        eval_id=run.eval_id,
        name=run.name,
        created_at=run.created_at,
        status=run.status,
        model=run.model,
        data_source=run.data_source,
        metadata=run.metadata,
        result_counts=ResultCounts(**run.result_counts.model_dump()),
        per_testing_criteria_results=[
            CriterionResult(**c.model_dump()) for c in run.per_testing_criteria_results
        ],
        per_model_usage=[ModelUsage(**u.model_dump()) for u in run.per_model_usage],
        error=_error(run.error),
    )


def _output(output: OutputRecord) -> OutputItem:
    sample = output.sample
    return OutputItem(
        id=output.id,
        eval_id=output.eval_id,
        run_id=output.run_id,
        created_at=output.created_at,
        status=output.status,
        datasource_item_id=output.index,
        datasource_item=output.item,
        results=[
            GraderResult(name=r.name, type=r.type, score=r.score, passed=r.passed, error=r.error)
            for r in output.results
        ],
        sample=Sample(
            input=[Message(role=m.get("role", ""), content=m.get("content")) for m in sample.input],
            output=[
                Message(role=m.get("role", ""), content=m.get("content")) for m in sample.output
            ],
            finish_reason=sample.finish_reason,
            model=sample.model,
            usage=SampleUsage(
                prompt_tokens=sample.prompt_tokens,
                completion_tokens=sample.completion_tokens,
                total_tokens=sample.total_tokens,
                cached_tokens=sample.cached_tokens,
            ),
            error=_error(sample.error),
            temperature=sample.temperature,
            max_completion_tokens=sample.max_completion_tokens,
            top_p=sample.top_p,
            seed=sample.seed,
        ),
    )
