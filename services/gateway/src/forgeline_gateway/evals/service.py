"""Evals, their runs and output items: creating, checking, listing and deleting them, and
starting the runs (`RunExecutor`). Takes plain values (JSON-like mappings as the API parsed
them) and raises the kit's errors, which the API turns into OpenAI's.

Everything a run will need is checked when it is created, so a bad data source is a 400 then,
never a run that fails later: the rows (inline or from a file of purpose ``evals``) match the
eval's ``item_schema``; every template of the prompt and of the graders names something in every
row (a row without the field is a 400 naming the row and the field); the model is deployed.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from jsonschema import exceptions as schema_errors  # type: ignore[import-untyped]
from jsonschema import validators

from forgeline_gateway.evals.graders import Grader, build_graders
from forgeline_gateway.evals.records import EvalRecord, OutputRecord, RunRecord
from forgeline_gateway.evals.rows import Row, check_row
from forgeline_gateway.evals.runner import RunExecutor
from forgeline_gateway.evals.sampling import (
    SAMPLE_FIELDS,
    Prompt,
    Sampler,
    check_sampling_params,
)
from forgeline_gateway.evals.store import EvalStore
from forgeline_gateway.evals.templates import MissingVariable, Reference
from forgeline_kit.errors import InvalidArgument, NotFound

__all__ = ["EvalService", "RowSource", "data_source_schema"]

Order = Literal["asc", "desc"]

#: The ``sample`` namespace's JSON schema, shown in an eval's ``data_source_config.schema``.
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "output_text": {"type": "string"},
        "output_tools": {"type": "array", "items": {"type": "object"}},
        "finish_reason": {"type": "string"},
    },
    "required": ["model", "choices", "output_text"],
}

_REFUSED_CONFIGS = {
    "logs": "it selects stored responses and chat completions, and this gateway stores none",
    "stored_completions": "it selects stored chat completions, and this gateway stores none",
}
_REFUSED_SOURCES = {
    "stored_completions": "this gateway stores no chat completions",
    "responses": "this gateway stores no responses",
}


class RowSource(Protocol):
    """The rows of a file uploaded with purpose ``evals``."""

    async def rows(self, file_id: str, *, param: str) -> list[Row]:
        """Raises InvalidArgument naming `param`: no such file, or not of purpose ``evals``."""
        ...


def data_source_schema(config: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema of a run's rows, as an eval's ``data_source_config.schema`` shows it."""
    properties: dict[str, Any] = {"item": config.get("item_schema", {})}
    required = ["item"]
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
        required.append("sample")
    return {"type": "object", "properties": properties, "required": required}


def _new_id(prefix: str) -> str:
    # Time first, so ids made within one second still sort in the order they were made.
    return f"{prefix}_{time.time_ns():016x}{secrets.token_hex(4)}"


class EvalService:
    """The Evals API's logic over its store, the runs' executor and the gateway's files."""

    def __init__(self, store: EvalStore, sampler: Sampler, files: RowSource) -> None:
        self.store = store
        self.sampler = sampler
        self.files = files
        self.executor = RunExecutor(store, sampler)

    async def start(self) -> None:
        """Resume the runs a previous gateway left queued or in progress."""
        await self.executor.start()

    async def close(self) -> None:
        await self.executor.close()

    # --- evals ----------------------------------------------------------------------------

    async def create_eval(
        self,
        *,
        name: str | None,
        metadata: dict[str, str] | None,
        data_source_config: Mapping[str, Any],
        testing_criteria: Sequence[Mapping[str, Any]],
    ) -> EvalRecord:
        """Check and store a new eval.

        Raises:
            InvalidArgument: a data source config other than ``custom``, an item schema that is
                not a JSON schema, or a bad testing criterion; names the parameter.
        """
        config = _checked_config(data_source_config)
        build_graders(testing_criteria, param="testing_criteria")
        now = int(time.time())
        eval_id = _new_id("eval")
        record = EvalRecord(
            id=eval_id,
            name=name or eval_id,
            created_at=now,
            updated_at=now,
            metadata=metadata,
            data_source_config=config,
            testing_criteria=tuple(dict(spec) for spec in testing_criteria),
        )
        await self.store.run(lambda: self.store.put_eval(record))
        return record

    async def get_eval(self, eval_id: str) -> EvalRecord:
        """Raises NotFound (``param: eval_id``)."""
        record = await self.store.run(lambda: self.store.get_eval(eval_id))
        if record is None:
            raise NotFound(f"No eval found with id '{eval_id}'.", field="eval_id")
        return record

    async def list_evals(
        self,
        *,
        after: str | None,
        limit: int,
        order: Order,
        order_by: Literal["created_at", "updated_at"],
    ) -> tuple[list[EvalRecord], bool]:
        """A page of evals and whether more follow.

        Raises:
            InvalidArgument: `after` names no eval.
        """
        cursor = None
        if after is not None:
            cursor = await self.store.run(lambda: self.store.get_eval(after))
            if cursor is None:
                raise InvalidArgument(f"'after' names no eval: {after}", field="after")
        return await self.store.run(
            lambda: self.store.list_evals(after=cursor, limit=limit, order=order, order_by=order_by)
        )

    async def update_eval(self, eval_id: str, changes: Mapping[str, Any]) -> EvalRecord:
        """Rename an eval or replace its metadata (`changes` holds ``name``, ``metadata``)."""
        record = await self.get_eval(eval_id)
        update: dict[str, Any] = {"updated_at": int(time.time())}
        if changes.get("name") is not None:
            update["name"] = changes["name"]
        if "metadata" in changes:
            update["metadata"] = changes["metadata"]
        updated = record.model_copy(update=update)
        await self.store.run(lambda: self.store.put_eval(updated))
        return updated

    async def delete_eval(self, eval_id: str) -> None:
        """Delete an eval with its runs (those under way are stopped first).

        Raises:
            NotFound: no such eval.
        """
        await self.get_eval(eval_id)
        runs, _ = await self.store.run(
            lambda: self.store.list_runs(
                eval_id, after=None, limit=1_000_000, order="asc", status=None
            )
        )
        for run in runs:
            await self.executor.stop(run.id)
        await self.store.run(lambda: self.store.delete_eval(eval_id))

    # --- runs -----------------------------------------------------------------------------

    async def create_run(
        self,
        eval_id: str,
        *,
        name: str | None,
        metadata: dict[str, str] | None,
        data_source: Mapping[str, Any],
    ) -> RunRecord:
        """Check a run's data source against the eval, store the run and start it.

        Raises:
            NotFound: no such eval, or (``model_not_found``) the model is not deployed.
            InvalidArgument: a bad data source; names the parameter, and the row and field
                where a row is at fault.
            RegistryUnavailable: a file source could not be read (503).
        """
        found = await self.get_eval(eval_id)
        graders = build_graders(found.testing_criteria, param="testing_criteria")
        kind = data_source.get("type")
        model: str | None = None
        prompt: Prompt | None = None
        if kind in _REFUSED_SOURCES:
            raise InvalidArgument(
                f"The '{kind}' data source is not supported: {_REFUSED_SOURCES[kind]}. Use "
                "'jsonl' (rows with their samples) or 'completions' (a deployed model answers "
                "each row).",
                field="data_source.type",
            )
        if kind == "completions":
            model = data_source.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidArgument(
                    "Missing required parameter: 'data_source.model' (a deployed model).",
                    field="data_source.model",
                )
            spec = data_source.get("input_messages")
            if not isinstance(spec, Mapping):
                raise InvalidArgument(
                    "Missing required parameter: 'data_source.input_messages' (how each row "
                    "becomes the model's prompt).",
                    field="data_source.input_messages",
                )
            prompt = Prompt.of(spec, param="data_source.input_messages")
            check_sampling_params(
                data_source.get("sampling_params") or {}, param="data_source.sampling_params"
            )
            self.sampler.check_model(model)
        elif kind != "jsonl":
            raise InvalidArgument(
                f"Invalid value for 'data_source.type': one of 'jsonl', 'completions' "
                f"(got {kind!r}).",
                field="data_source.type",
            )
        rows, where = await self._rows(data_source.get("source"))
        await asyncio.to_thread(_check_rows, rows, where, found.data_source_config, graders, prompt)
        run = RunRecord(
            id=_new_id("evalrun"),
            eval_id=eval_id,
            name=name or model or "jsonl",
            created_at=int(time.time()),
            metadata=metadata,
            data_source=dict(data_source),
            model=model,
            rows=len(rows),
        ).recounted(found.criteria_names, [])
        await self.store.run(lambda: self.store.create_run(run, rows))
        await self.executor.launch(run.id)
        return run

    async def get_run(self, eval_id: str, run_id: str) -> RunRecord:
        """Raises NotFound (``param: run_id``): no such run of that eval."""
        run = await self.store.run(lambda: self.store.get_run(run_id))
        if run is None or run.eval_id != eval_id:
            await self.get_eval(eval_id)
            raise NotFound(f"No run found with id '{run_id}' in eval '{eval_id}'.", field="run_id")
        return run

    async def finished_run(self, eval_id: str, run_id: str) -> RunRecord:
        """The run once its work here has ended (completed, failed or canceled; a gateway
        closing meanwhile leaves it in progress, and so returns it)."""
        await self.executor.wait(run_id)
        return await self.get_run(eval_id, run_id)

    async def list_runs(
        self, eval_id: str, *, after: str | None, limit: int, order: Order, status: str | None
    ) -> tuple[list[RunRecord], bool]:
        await self.get_eval(eval_id)
        cursor = None
        if after is not None:
            cursor = await self.store.run(lambda: self.store.get_run(after))
            if cursor is None or cursor.eval_id != eval_id:
                raise InvalidArgument(f"'after' names no run of this eval: {after}", field="after")
        return await self.store.run(
            lambda: self.store.list_runs(
                eval_id, after=cursor, limit=limit, order=order, status=status
            )
        )

    async def cancel_run(self, eval_id: str, run_id: str) -> RunRecord:
        """Stop a queued or running run; it ends ``canceled`` with its output items kept.

        Raises:
            NotFound: no such run.
            InvalidArgument: the run has finished already (``param: run_id``).
        """
        run = await self.get_run(eval_id, run_id)
        if run.terminal:
            raise InvalidArgument(
                f"The run '{run_id}' is {run.status}; only a queued or in_progress run can be "
                "canceled.",
                field="run_id",
            )
        await self.executor.stop(run_id)

        def cancel() -> RunRecord | None:
            latest = self.store.get_run(run_id)
            if latest is None:
                return None
            if latest.terminal:
                return latest
            found = self.store.get_eval(eval_id)
            names = found.criteria_names if found else []
            done = latest.recounted(names, self.store.outputs(run_id)).model_copy(
                update={"status": "canceled", "finished_at": int(time.time())}
            )
            self.store.update_run(done)
            return self.store.get_run(run_id)

        cancelled = await self.store.run(cancel)
        if cancelled is None:
            raise NotFound(f"No run found with id '{run_id}' in eval '{eval_id}'.", field="run_id")
        return cancelled

    async def delete_run(self, eval_id: str, run_id: str) -> None:
        """Delete a run and its output items (stopped first if under way)."""
        await self.get_run(eval_id, run_id)
        await self.executor.stop(run_id)
        await self.store.run(lambda: self.store.delete_run(run_id))

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
    ) -> tuple[list[OutputRecord], bool]:
        await self.get_run(eval_id, run_id)
        cursor = None
        if after is not None:
            cursor = await self.store.run(lambda: self.store.get_output(after))
            if cursor is None or cursor.run_id != run_id:
                raise InvalidArgument(
                    f"'after' names no output item of this run: {after}", field="after"
                )
        return await self.store.run(
            lambda: self.store.list_outputs(
                run_id, after=cursor, limit=limit, order=order, status=status
            )
        )

    async def get_output(self, eval_id: str, run_id: str, output_id: str) -> OutputRecord:
        await self.get_run(eval_id, run_id)
        output = await self.store.run(lambda: self.store.get_output(output_id))
        if output is None or output.run_id != run_id:
            raise NotFound(
                f"No output item found with id '{output_id}' in run '{run_id}'.",
                field="output_item_id",
            )
        return output

    # --- data sources -----------------------------------------------------------------------

    async def _rows(self, source: Any) -> tuple[list[Row], _Where]:
        param = "data_source.source"
        if not isinstance(source, Mapping):
            raise InvalidArgument(f"Missing required parameter: '{param}'.", field=param)
        kind = source.get("type")
        if kind == "file_content":
            content = source.get("content")
            if not isinstance(content, list) or not content:
                raise InvalidArgument(
                    f"'{param}.content' must be a list of at least one row.",
                    field=f"{param}.content",
                )
            rows: list[Row] = []
            for index, value in enumerate(content):
                try:
                    rows.append(check_row(value))
                except ValueError as error:
                    where = f"{param}.content[{index}]"
                    raise InvalidArgument(f"Invalid row '{where}': {error}.", field=where) from None
            return rows, _Where(f"{param}.content", None)
        if kind == "file_id":
            file_id = source.get("id")
            if not isinstance(file_id, str) or not file_id:
                raise InvalidArgument(
                    f"Missing required parameter: '{param}.id'.", field=f"{param}.id"
                )
            rows = await self.files.rows(file_id, param=f"{param}.id")
            return rows, _Where(f"{param}.id", file_id)
        if kind in _REFUSED_SOURCES:
            raise InvalidArgument(
                f"The '{kind}' source is not supported: {_REFUSED_SOURCES[kind]}; use "
                "'file_content' or 'file_id'.",
                field=f"{param}.type",
            )
        raise InvalidArgument(
            f"Invalid value for '{param}.type': one of 'file_content', 'file_id' (got {kind!r}).",
            field=f"{param}.type",
        )


class _Where:
    """Where a data source's rows came from, to name a bad row in an error."""

    def __init__(self, param: str, file_id: str | None) -> None:
        self.param = param
        self.file_id = file_id

    def row(self, index: int) -> tuple[str, str]:
        """How to name row `index` in a message, and the ``param`` of its error."""
        if self.file_id is None:
            return f"Item {index} ('{self.param}[{index}]')", f"{self.param}[{index}]"
        return f"Item {index} of file '{self.file_id}' (counting rows from 0)", self.param


def _checked_config(config: Mapping[str, Any]) -> dict[str, Any]:
    param = "data_source_config"
    kind = config.get("type")
    if kind in _REFUSED_CONFIGS:
        raise InvalidArgument(
            f"The '{kind}' data source config is not supported: {_REFUSED_CONFIGS[kind]}. Use "
            "'custom' with an item_schema.",
            field=f"{param}.type",
        )
    if kind != "custom":
        raise InvalidArgument(
            f"Invalid value for '{param}.type': 'custom' (got {kind!r}).", field=f"{param}.type"
        )
    schema = config.get("item_schema")
    if not isinstance(schema, Mapping):
        raise InvalidArgument(
            f"Missing required parameter: '{param}.item_schema' (a JSON schema of the rows' "
            "items).",
            field=f"{param}.item_schema",
        )
    try:
        validators.validator_for(schema).check_schema(schema)
    except schema_errors.SchemaError as error:
        raise InvalidArgument(
            f"Invalid value for '{param}.item_schema': not a valid JSON schema: {error.message}.",
            field=f"{param}.item_schema",
        ) from None
    except Exception as error:  # jsonschema's own failures on odd documents ($schema not a URI)
        raise InvalidArgument(
            f"Invalid value for '{param}.item_schema': not a usable JSON schema ({error}).",
            field=f"{param}.item_schema",
        ) from None
    unknown = sorted(set(config) - {"type", "item_schema", "include_sample_schema"})
    if unknown:
        raise InvalidArgument(
            f"Unknown parameter: '{param}.{unknown[0]}'.", field=f"{param}.{unknown[0]}"
        )
    return {
        "type": "custom",
        "item_schema": dict(schema),
        "include_sample_schema": bool(config.get("include_sample_schema", False)),
    }


def _check_rows(
    rows: Sequence[Row],
    where: _Where,
    config: Mapping[str, Any],
    graders: Sequence[Grader],
    prompt: Prompt | None,
) -> None:
    """Every row matches the item schema and has what every template names.

    Raises:
        InvalidArgument: naming the first row at fault and why.
    """
    schema = config.get("item_schema") or {}
    validator = validators.validator_for(schema)(schema)
    sampled = prompt is not None
    grader_refs: list[tuple[str, Reference]] = [
        (f"testing_criteria[{i}].{field}", ref)
        for i, grader in enumerate(graders)
        for field, template in grader.templates
        for ref in template.references
    ]
    if sampled:
        for field, ref in grader_refs:
            if ref.namespace == "sample" and ref.path[0] not in SAMPLE_FIELDS:
                raise InvalidArgument(
                    f"'{field}' uses {{{{{ref.text}}}}}, but the model's sample has only "
                    f"{', '.join(SAMPLE_FIELDS)}.",
                    field=field,
                )
    for index, row in enumerate(rows):
        name, param = where.row(index)
        try:
            error = schema_errors.best_match(validator.iter_errors(row.item))
        except Exception as failure:  # an unresolvable $ref, say: the schema's fault, not the row's
            raise InvalidArgument(
                f"The eval's item_schema cannot be applied to {name[0].lower()}{name[1:]}: "
                f"{failure}.",
                field=param,
            ) from None
        if error is not None:
            at = "/".join(str(step) for step in error.absolute_path)
            place = f" (at '{at}')" if at else ""
            raise InvalidArgument(
                f"{name} does not match the eval's item_schema: {error.message}{place}.",
                field=param,
            )
        refs = prompt.references if prompt is not None else []
        refs += [(f, r) for f, r in grader_refs if r.namespace == "item" or not sampled]
        namespaces = {"item": row.item, "sample": row.sample}
        for field, ref in refs:
            try:
                ref.resolve(namespaces)
            except MissingVariable as missing:
                hint = ""
                if ref.namespace == "sample" and row.sample is None:
                    hint = (
                        " Give each row a 'sample' (the answer to grade), or run a "
                        "'completions' data source to have a deployed model answer."
                    )
                raise InvalidArgument(
                    f"{name} has nothing for '{field}': {missing}.{hint}", field=param
                ) from None
        if prompt is not None:
            try:
                prompt.render(row.item)
            except (MissingVariable, ValueError) as bad:
                raise InvalidArgument(f"{name}: {bad}.", field=param) from None
