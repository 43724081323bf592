"""Validate LLaMA-Factory training arguments before anything runs.

Every key is checked against :mod:`~forgeline_trainer.llamafactory.schema` (LLaMA-Factory's own
argument dataclasses): an unknown key is an error naming it, with the closest known names; a value
is converted to the argument's declared type (``150.0`` becomes ``150`` for an int, ``"1e-4"``
from YAML becomes a float) or refused (``2.5`` for an int, ``"cosine_decay"`` for a scheduler).
A job's arguments then go through the allow-list of
:mod:`~forgeline_trainer.llamafactory.policy` (owned and refused arguments named with the reason,
special ones checked and normalized). Every problem is reported at once, one line each.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

import yaml
from pydantic import TypeAdapter, ValidationError

from forgeline_kit.errors import InvalidArgument
from forgeline_trainer.llamafactory.policy import (
    JobPolicy,
    Treatment,
    apply_rule,
    refusal,
    rule_for,
)
from forgeline_trainer.llamafactory.schema import ArgumentSchema, ArgumentSpec, load_schema

__all__ = ["convert_value", "parse_yaml", "validate_arguments"]

_ADAPTERS: Final[Mapping[str, TypeAdapter[Any]]] = {
    "bool": TypeAdapter(bool),
    "int": TypeAdapter(int),
    "float": TypeAdapter(float),
    "str": TypeAdapter(str),
}


def parse_yaml(text: str) -> dict[str, Any]:
    """The mapping of a LLaMA-Factory training YAML, as its examples and tutorials write it
    (comments, ``### section`` headers and all)."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidArgument(
            f"the LLaMA-Factory YAML does not parse: {error}", field="llamafactory_yaml"
        ) from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
        raise InvalidArgument(
            "the LLaMA-Factory YAML must be a mapping of argument names to values "
            f"(found {type(loaded).__name__})",
            field="llamafactory_yaml",
        )
    return loaded


def validate_arguments(
    raw: Mapping[str, Any],
    *,
    schema: ArgumentSchema | None = None,
    allow_trainer_owned: bool = False,
    policy: JobPolicy | None = None,
) -> dict[str, Any]:
    """``raw`` with every value converted to its argument's type.

    ``None`` values are dropped (a YAML's ``resume_from_checkpoint: null`` means "not set").
    A job's arguments (the default) must also pass the argument policy under ``policy`` (the
    operator's choices; the safe defaults when ``None``): owned and refused arguments are
    refused, special ones checked and normalized (``deepspeed: ds_z3_config.json`` becomes
    ``z3``). ``allow_trainer_owned`` is for the trainer's own arguments (a job's, already
    checked, plus the paths and checkpoint it sets): types only.

    Raises:
        InvalidArgument: one line per bad key; ``field`` names the first.
    """
    specs = (schema or load_schema()).by_name()
    rules = policy or JobPolicy()
    problems: list[tuple[str, str]] = []
    converted: dict[str, Any] = {}
    for name, value in raw.items():
        spec = specs.get(name)
        if spec is None:
            problems.append((name, _unknown(name, specs)))
            continue
        if value is None:
            continue
        rule = rule_for(name)
        if not allow_trainer_owned and rule.treatment in (Treatment.OWNED, Treatment.REFUSED):
            # Refused whatever the value: the reason matters more than a type mistake.
            problems.append((name, refusal(name, rule)))
            continue
        try:
            typed = convert_value(spec, value)
            converted[name] = typed if allow_trainer_owned else apply_rule(name, typed, rules)
        except ValueError as error:
            problems.append((name, str(error)))
    if problems:
        raise InvalidArgument("\n".join(line for _, line in problems), field=problems[0][0])
    return converted


def convert_value(spec: ArgumentSpec, value: Any) -> Any:
    """``value`` as ``spec``'s type; ValueError says what was expected."""
    if value is None:
        if spec.nullable:
            return None
        raise ValueError(f"'{spec.name}' cannot be null (it is {spec.type_text})")
    if spec.kind == "any":
        return value
    if spec.kind == "choice":
        text = value.value if hasattr(value, "value") else value
        if isinstance(text, str) and text in spec.choices:
            return text
        raise ValueError(f"'{spec.name}' must be one of {', '.join(spec.choices)}; got {value!r}")
    if spec.kind in ("int", "float") and isinstance(value, bool):
        # pydantic's lax mode takes True for 1: in an argument file that is always a mistake.
        raise ValueError(f"'{spec.name}' must be {_article(spec.kind)}; got {value!r}")
    try:
        return _ADAPTERS[spec.kind].validate_python(value)
    except ValidationError as error:
        raise ValueError(f"'{spec.name}' must be {_article(spec.kind)}; got {value!r}") from error


def _article(kind: str) -> str:
    return {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a number",
        "str": "a string",
    }[kind]


def _unknown(name: str, specs: Mapping[str, ArgumentSpec]) -> str:
    close = difflib.get_close_matches(name, specs.keys(), n=3, cutoff=0.75)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown LLaMA-Factory argument '{name}'{hint}"
