"""OpenAI's eval templates: ``{{ item.answer }}``, ``{{sample.output_text}}``.

A template is text with references in double curly braces. A reference names a namespace
(``item``: the data source's row; ``sample``: the model's answer, or the row's ``sample``) and a
path into it: keys separated by dots, list positions as ``[0]`` or ``.0``
(``{{ item.turns[0].content }}``). A string value is inserted as it is; any other value as JSON
(``3``, ``true``, ``{"a": 1}``). A reference to nothing is an error (`MissingVariable`), never
an empty string: a typo in a template would otherwise grade every row against "".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from forgeline_kit.errors import InvalidArgument

__all__ = ["NAMESPACES", "MissingVariable", "Reference", "Template"]

#: The namespaces a reference may start with.
NAMESPACES: Final = ("item", "sample")

_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")
_NAMESPACE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(LookupError):  # noqa: N818 (a lookup that found nothing)
    """A reference that names nothing in the namespaces it was rendered with."""

    def __init__(self, reference: Reference, reason: str) -> None:
        super().__init__(f"{{{{{reference.text}}}}} {reason}")
        self.reference = reference
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    """One ``{{ namespace.path }}``."""

    namespace: str
    path: tuple[str | int, ...]
    #: As written, without the braces and surrounding blanks (``item.answer``).
    text: str

    @classmethod
    def parse(cls, text: str) -> Reference:
        """The reference `text` (``item.answer``, ``sample.choices[0]``).

        Raises:
            ValueError: not a namespace and a path, or an unknown namespace.
        """
        text = text.strip()
        head = _NAMESPACE.match(text)
        if head is None:
            raise ValueError(f"'{text}' is not a reference like 'item.answer'")
        namespace = head.group(1)
        if namespace not in NAMESPACES:
            raise ValueError(
                f"'{text}' starts with '{namespace}'; a reference starts with "
                f"{' or '.join(repr(n) for n in NAMESPACES)}"
            )
        path: list[str | int] = []
        position = head.end()
        while position < len(text):
            step = _SEGMENT.match(text, position)
            if step is None:
                raise ValueError(
                    f"'{text}' is not a reference like 'item.answer' or 'item.turns[0].content'"
                )
            key, index = step.groups()
            path.append(int(index) if index is not None else _key(key))
            position = step.end()
        if not path:
            raise ValueError(f"'{text}' names a whole namespace; name a field, as in 'item.answer'")
        return cls(namespace, tuple(path), text)

    def resolve(self, namespaces: Mapping[str, Any]) -> Any:
        """The value the reference names.

        Raises:
            MissingVariable: the namespace is absent or the path leads nowhere.
        """
        if namespaces.get(self.namespace) is None:
            raise MissingVariable(self, f"uses the '{self.namespace}' namespace, which is empty")
        node = namespaces[self.namespace]
        walked = self.namespace
        for step in self.path:
            if isinstance(node, Mapping) and isinstance(step, str) and step in node:
                node = node[step]
            elif isinstance(node, Mapping) and isinstance(step, int) and str(step) in node:
                node = node[str(step)]
            elif isinstance(node, list) and isinstance(step, int) and step < len(node):
                node = node[step]
            else:
                shown = f"[{step}]" if isinstance(step, int) else f".{step}"
                raise MissingVariable(self, f"names nothing: '{walked}' has no '{shown[1:]}'")
            walked += f"[{step}]" if isinstance(step, int) else f".{step}"
        return node


def _key(key: str) -> str | int:
    # `item.turns.0` is a list position, as JSON paths write it; a dict key "0" still matches.
    return int(key) if key.isdigit() else key


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and references, in order."""

    text: str
    parts: tuple[str | Reference, ...]

    @classmethod
    def parse(cls, text: str, *, param: str) -> Template:
        """Parse `text`.

        Raises:
            InvalidArgument: a reference that is not ``namespace.path``, an unknown namespace,
                or braces left open; names `param`.
        """
        parts: list[str | Reference] = []
        position = 0
        for match in _BRACES.finditer(text):
            if match.start() > position:
                parts.append(text[position : match.start()])
            try:
                parts.append(Reference.parse(match.group(1)))
            except ValueError as error:
                raise InvalidArgument(
                    f"Invalid template in '{param}': {error}.", field=param
                ) from None
            position = match.end()
        rest = text[position:]
        if "{{" in rest:
            raise InvalidArgument(
                f"Invalid template in '{param}': '{{{{' is never closed with '}}}}'.", field=param
            )
        if rest:
            parts.append(rest)
        return cls(text, tuple(parts))

    @property
    def references(self) -> tuple[Reference, ...]:
        return tuple(part for part in self.parts if isinstance(part, Reference))

    def render(self, namespaces: Mapping[str, Any]) -> str:
        """The text with every reference replaced by its value.

        Raises:
            MissingVariable: a reference names nothing.
        """
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(as_text(part.resolve(namespaces)))
        return "".join(out)


def as_text(value: Any) -> str:
    """A value as a template inserts it: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
