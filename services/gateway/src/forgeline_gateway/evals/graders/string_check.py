"""OpenAI's ``string_check`` grader: compares the rendered `input` with the rendered `reference`
and scores 1 or 0.

* ``eq``: the two are equal; ``ne``: they differ (both case-sensitive);
* ``like``: `input` contains `reference`, case-sensitive; ``ilike``: the same, ignoring case.

A row passes when it scores 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from forgeline_gateway.evals.graders.base import Comparison, ComparisonSpec, Grade, parse_spec

__all__ = ["TYPE", "StringCheck", "StringCheckSpec"]

TYPE = "string_check"

Operation = Literal["eq", "ne", "like", "ilike"]


class StringCheckSpec(ComparisonSpec):
    """A ``string_check`` testing criterion as stored and echoed."""

    type: Literal["string_check"]
    operation: Operation


@dataclass(frozen=True)
class StringCheck(Comparison):
    """A ``string_check`` grader."""

    operation: Operation
    type: str = TYPE

    @classmethod
    def of(cls, spec: Mapping[str, Any], *, param: str) -> StringCheck:
        """The grader of a ``string_check`` criterion.

        Raises:
            InvalidArgument: a missing or bad field, or a bad template; names it under `param`.
        """
        checked = parse_spec(StringCheckSpec, spec, param=param)
        return cls(*cls.parts(checked, param=param), operation=checked.operation)

    def grade(self, namespaces: Mapping[str, Any]) -> Grade:
        given = self.input.render(namespaces)
        expected = self.reference.render(namespaces)
        if self.operation == "eq":
            hit = given == expected
        elif self.operation == "ne":
            hit = given != expected
        elif self.operation == "like":
            hit = expected in given
        else:
            hit = expected.casefold() in given.casefold()
        return Grade(self.name, self.type, 1.0 if hit else 0.0, hit)
