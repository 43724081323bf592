"""What every grader is: a named check that turns one row (``item``) and its answer (``sample``)
into a score and a pass or fail, as OpenAI's graders do
(https://platform.openai.com/docs/guides/graders)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forgeline_gateway.evals.templates import Template
from forgeline_kit.errors import InvalidArgument

__all__ = ["Comparison", "ComparisonSpec", "Grade", "Grader", "parse_spec"]

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class Grade:
    """One grader's verdict on one row. `error` is set when the grader could not score it (the
    row then counts as errored, not failed)."""

    name: str
    type: str
    score: float
    passed: bool
    error: str | None = None


class Grader(Protocol):
    """A testing criterion of an eval."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def templates(self) -> Sequence[tuple[str, Template]]:
        """Its templates, each with the field that holds it (``input``, ``reference``)."""
        ...

    def grade(self, namespaces: Mapping[str, Any]) -> Grade:
        """Score one row; `namespaces` holds ``item`` and ``sample``.

        Raises:
            MissingVariable: a template names nothing in `namespaces`.
        """
        ...


def parse_spec(model: type[S], spec: Mapping[str, Any], *, param: str) -> S:
    """`spec` as the grader family's `model`; a bad field is a 400 naming ``param.field``."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(step) for step in first["loc"])
        field = f"{param}.{where}" if where else param
        message = str(first["msg"])
        if first["type"] == "missing":
            raise InvalidArgument(f"Missing required parameter: '{field}'.", field=field) from None
        if first["type"] == "extra_forbidden":
            raise InvalidArgument(f"Unknown parameter: '{field}'.", field=field) from None
        raise InvalidArgument(
            f"Invalid value for '{field}': {message[:1].lower()}{message[1:]}.", field=field
        ) from None


class ComparisonSpec(BaseModel):
    """The fields of a criterion that compares its rendered `input` with its rendered `reference`
    (``string_check``, ``text_similarity``); each family's spec narrows `type` and adds its own
    (the fields keep this order, so the first error named is the same in every family)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    name: str = Field(min_length=1, max_length=256)
    input: str
    reference: str


@dataclass(frozen=True)
class Comparison:
    """A grader that compares its rendered `input` with its rendered `reference`."""

    name: str
    input: Template
    reference: Template

    @staticmethod
    def parts(spec: ComparisonSpec, *, param: str) -> tuple[str, Template, Template]:
        """`spec`'s name and its two templates, parsed (the first fields of a `Comparison`).

        Raises:
            InvalidArgument: a bad template; names it under `param`.
        """
        return (
            spec.name,
            Template.parse(spec.input, param=f"{param}.input"),
            Template.parse(spec.reference, param=f"{param}.reference"),
        )

    @property
    def templates(self) -> Sequence[tuple[str, Template]]:
        return (("input", self.input), ("reference", self.reference))
