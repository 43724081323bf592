"""A tiny renderer for the subset of Go's text/template that the converter's Ollama templates use.

Ollama renders TEMPLATE with Go's text/template (https://pkg.go.dev/text/template); Go cannot
run here, so this follows that package's documented rules for the constructs below and refuses
everything else, so a template using more than this cannot pass a test by accident:

- text, and actions ``{{ ... }}`` with the trim markers ``{{-`` / ``-}}`` (which remove all
  adjacent white space of the neighbouring text);
- ``{{ .Field }}`` on the current dot; ``{{ "string" }}`` (a Go string literal, printed);
- ``{{ range .Field }}...{{ end }}`` over a list, dot set to each element;
- ``{{ if eq .Field "string" }}...{{ else if eq ... }}...{{ else }}...{{ end }}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_FIELD = re.compile(r"^\.(\w+)$")
_STRING = re.compile(r'^"(?:[^"\\]|\\.)*"$')
_EQ = re.compile(r'^eq\s+\.(\w+)\s+("(?:[^"\\]|\\.)*")$')


class GoTemplateError(ValueError):
    """The template uses something outside the supported subset, or is malformed."""


@dataclass
class _Block:
    kind: str  # "root", "range", "if"
    argument: str = ""
    body: list[Any] = field(default_factory=list)
    otherwise: list[Any] | None = None  # for "if": the else branch


def _tokens(template: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if text:
            tokens.append(("text", text))
        tokens.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = template[position:]
    if "{{" in tail or "}}" in tail:
        raise GoTemplateError(f"unbalanced action near {tail[:40]!r}")
    tail = tail.lstrip() if trim_next else tail
    if tail:
        tokens.append(("text", tail))
    return tokens


def _parse(template: str) -> _Block:
    root = _Block("root")
    stack = [root]
    # Where the next node goes: the body or the else branch of the innermost block.
    targets: list[list[Any]] = [root.body]
    for kind, value in _tokens(template):
        if kind == "text" or _FIELD.match(value) or _STRING.match(value):
            targets[-1].append((kind, value))
        elif value.startswith("range "):
            block = _Block("range", value.removeprefix("range ").strip())
            targets[-1].append(block)
            stack.append(block)
            targets.append(block.body)
        elif value.startswith("if "):
            block = _Block("if", value.removeprefix("if ").strip())
            targets[-1].append(block)
            stack.append(block)
            targets.append(block.body)
        elif value.startswith("else if "):
            outer = stack[-1]
            if outer.kind != "if" or outer.otherwise is not None:
                raise GoTemplateError("else if outside an if")
            nested = _Block("if", value.removeprefix("else if ").strip())
            outer.otherwise = [nested]
            # An "else if" chain shares the outer if's single {{ end }}.
            stack[-1] = nested
            targets[-1] = nested.body
        elif value == "else":
            outer = stack[-1]
            if outer.kind != "if" or outer.otherwise is not None:
                raise GoTemplateError("else outside an if")
            outer.otherwise = []
            targets[-1] = outer.otherwise
        elif value == "end":
            if len(stack) == 1:
                raise GoTemplateError("end without a block")
            stack.pop()
            targets.pop()
        else:
            raise GoTemplateError(f"unsupported action {{{{ {value} }}}}")
    if len(stack) != 1:
        raise GoTemplateError("a block is not closed with {{ end }}")
    return root


def _lookup(dot: Any, name: str) -> Any:
    if not isinstance(dot, Mapping) or name not in dot:
        raise GoTemplateError(f"can't evaluate field {name}")
    return dot[name]


def _condition(argument: str, dot: Any) -> bool:
    match = _EQ.match(argument)
    if match is None:
        raise GoTemplateError(f"unsupported condition {argument!r}")
    return bool(_lookup(dot, match[1]) == json.loads(match[2]))


def _render(nodes: list[Any], dot: Any, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, tuple):
            kind, value = node
            if kind == "text":
                out.append(value)
            elif _STRING.match(value):
                out.append(json.loads(value))
            else:
                out.append(str(_lookup(dot, value[1:])))
        elif node.kind == "range":
            field_match = _FIELD.match(node.argument)
            if field_match is None:
                raise GoTemplateError(f"unsupported range {node.argument!r}")
            for item in _lookup(dot, field_match[1]):
                _render(node.body, item, out)
        elif _condition(node.argument, dot):
            _render(node.body, dot, out)
        elif node.otherwise is not None:
            _render(node.otherwise, dot, out)


def render(template: str, data: Mapping[str, Any]) -> str:
    """Render ``template`` with ``data`` as the top-level dot."""
    out: list[str] = []
    _render(_parse(template).body, data, out)
    return "".join(out)
