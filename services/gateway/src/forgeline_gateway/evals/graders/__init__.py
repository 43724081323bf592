"""The graders of eval testing criteria, one module per family of OpenAI's graders:
`string_check` and `text_similarity`. Model-judged graders (``label_model``, ``score_model``),
``python`` (it would run the caller's code in the gateway) and ``multi`` are refused by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from forgeline_gateway.evals.graders import string_check, text_similarity
from forgeline_gateway.evals.graders.base import Grade, Grader
from forgeline_kit.errors import InvalidArgument

__all__ = ["GRADER_TYPES", "Grade", "Grader", "build_grader", "build_graders"]

_BUILDERS: Final[dict[str, Callable[..., Grader]]] = {
    string_check.TYPE: string_check.StringCheck.of,
    text_similarity.TYPE: text_similarity.TextSimilarity.of,
}
#: The grader types this gateway runs.
GRADER_TYPES: Final[tuple[str, ...]] = tuple(_BUILDERS)

_REFUSED: Final[dict[str, str]] = {
    "label_model": "it needs a judge model; model-judged graders are not supported yet",
    "score_model": "it needs a judge model; model-judged graders are not supported yet",
    "python": "it would run the caller's code inside the gateway, which no API key may do",
    "multi": "graders are not combined here; give each one as its own testing criterion",
}


def build_grader(spec: Mapping[str, Any], *, param: str) -> Grader:
    """The grader of one testing criterion.

    Raises:
        InvalidArgument: an unknown or unsupported type (the message lists the supported ones),
            or a bad field; names it under `param`.
    """
    kind = spec.get("type")
    valid = ", ".join(GRADER_TYPES)
    if not isinstance(kind, str):
        raise InvalidArgument(
            f"Missing required parameter: '{param}.type' (one of {valid}).", field=f"{param}.type"
        )
    if kind in _REFUSED:
        raise InvalidArgument(
            f"The '{kind}' grader is not supported by this gateway: {_REFUSED[kind]}. "
            f"Supported graders: {valid}.",
            field=f"{param}.type",
        )
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise InvalidArgument(
            f"Invalid value for '{param}.type': unknown grader {kind!r}; supported graders: "
            f"{valid}.",
            field=f"{param}.type",
        )
    return builder(spec, param=param)


def build_graders(specs: Sequence[Mapping[str, Any]], *, param: str) -> list[Grader]:
    """The graders of an eval's testing criteria, whose names must differ (a run's results are
    counted per name).

    Raises:
        InvalidArgument: as `build_grader`, none at all, or a name given twice.
    """
    if not specs:
        raise InvalidArgument(f"'{param}' needs at least one grader.", field=param)
    graders: list[Grader] = []
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        grader = build_grader(spec, param=f"{param}[{index}]")
        if grader.name in seen:
            raise InvalidArgument(
                f"Two testing criteria are named {grader.name!r}; give each its own name.",
                field=f"{param}[{index}].name",
            )
        seen.add(grader.name)
        graders.append(grader)
    return graders
