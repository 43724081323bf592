"""Every argument LLaMA-Factory's ``train`` accepts, derived from its own dataclasses.

LLaMA-Factory parses a training YAML into five dataclasses (``ModelArguments``, ``DataArguments``,
``TrainingArguments`` — a subclass of transformers' ``Seq2SeqTrainingArguments`` —,
``FinetuningArguments`` and ``GeneratingArguments``). :func:`derive_schema` reads their fields into
an :class:`ArgumentSchema`; the result is kept as ``argument_schema.json`` beside this module so
the service validates a request without importing torch (about 10 s). A test derives the schema
from the installed ``llamafactory`` again and compares, so an upgrade cannot leave it stale.

Regenerate with ``python -m forgeline_trainer.llamafactory.schema``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: The snapshot shipped with the package.
SCHEMA_PATH = Path(__file__).with_name("argument_schema.json")

#: The dataclasses ``llamafactory-cli train`` parses, in LLaMA-Factory's order.
ARGUMENT_GROUPS = (
    "ModelArguments",
    "DataArguments",
    "TrainingArguments",
    "FinetuningArguments",
    "GeneratingArguments",
)

Kind = Literal["bool", "int", "float", "str", "choice", "any"]


class ArgumentSpec(BaseModel):
    """One argument: its name, where it is declared, and what values it takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    group: str
    #: ``choice`` takes one of ``choices``; ``any`` is a structured value (dict, list, union)
    #: that LLaMA-Factory interprets itself.
    kind: Kind
    nullable: bool = False
    choices: tuple[str, ...] = ()
    #: The declared type as LLaMA-Factory writes it, for messages.
    type_text: str


class ArgumentSchema(BaseModel):
    """Every argument of one LLaMA-Factory version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    llamafactory_version: str
    transformers_version: str
    arguments: tuple[ArgumentSpec, ...]

    def by_name(self) -> dict[str, ArgumentSpec]:
        """The arguments keyed by name."""
        return {spec.name: spec for spec in self.arguments}

    def to_json(self) -> str:
        """The snapshot file's text."""
        return self.model_dump_json(indent=1) + "\n"


@cache
def load_schema(path: Path = SCHEMA_PATH) -> ArgumentSchema:
    """The schema snapshot shipped with the package."""
    return ArgumentSchema.model_validate_json(path.read_text(encoding="utf-8"))


def derive_schema() -> ArgumentSchema:
    """Read the schema from the installed ``llamafactory`` (imports torch: seconds)."""
    # Imported here, not at the top: they pull in torch, which validation never needs.
    import llamafactory
    import llamafactory.hparams as hparams
    import transformers

    specs: dict[str, ArgumentSpec] = {}
    for group in ARGUMENT_GROUPS:
        cls = getattr(hparams, group)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if not field.init or field.name.startswith("_") or field.name in specs:
                continue
            specs[field.name] = _spec(field.name, group, hints.get(field.name, field.type))
    return ArgumentSchema(
        llamafactory_version=str(llamafactory.__version__),
        transformers_version=str(transformers.__version__),
        arguments=tuple(sorted(specs.values(), key=lambda spec: spec.name)),
    )


def _spec(name: str, group: str, annotation: Any) -> ArgumentSpec:
    members = _union_members(annotation)
    nullable = type(None) in members
    members = [member for member in members if member is not type(None)]
    kind: Kind = "any"
    choices: tuple[str, ...] = ()
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    literals = [m for m in members if typing.get_origin(m) is Literal]
    if len(members) == 1 and members[0] in (bool, int, float, str):
        kind = typing.cast(Kind, members[0].__name__)
    elif enums and all(m is str or m in enums for m in members):
        # ``SchedulerType | str`` and friends: transformers turns the string into the enum in
        # ``__post_init__`` and refuses anything else, so only the enum's values are valid.
        kind = "choice"
        choices = tuple(str(item.value) for cls in enums for item in cls)
    elif literals and len(literals) == len(members):
        kind = "choice"
        choices = tuple(str(value) for lit in literals for value in typing.get_args(lit))
    return ArgumentSpec(
        name=name,
        group=group,
        kind=kind,
        nullable=nullable,
        choices=choices,
        type_text=_type_text(annotation),
    )


def _union_members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _type_text(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def main() -> None:
    """Rewrite the snapshot from the installed ``llamafactory``."""
    SCHEMA_PATH.write_text(derive_schema().to_json(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
