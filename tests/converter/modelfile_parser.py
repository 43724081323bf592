"""Ollama's Modelfile parser, read from its source (ollama/ollama ``parser/parser.go``,
``ParseFile``, ``parseRuneForState`` and ``unquote``), so tests can check that what the converter
writes is read back by Ollama as exactly the instructions and values it meant.

It follows the Go code's state machine: an instruction name, then a value that ends at a line end
once what was read unquotes (a bare word, ``"..."`` or triple quotes; there are no escapes), with
non-printable characters dropped. Comments and MESSAGE roles are read as Ollama reads them.
"""

from __future__ import annotations

from enum import Enum, auto

COMMANDS = frozenset(
    {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser"}
    | {"parameter", "message", "requires"}
)


class ModelfileSyntaxError(ValueError):
    """Ollama would refuse the file."""


class _State(Enum):
    NIL = auto()
    NAME = auto()
    VALUE = auto()
    PARAMETER = auto()
    MESSAGE = auto()
    COMMENT = auto()


def _unquote(text: str) -> tuple[str, bool]:
    if text.startswith('"""'):
        if len(text) >= 6 and text.endswith('"""'):
            return text[3:-3], True
        return "", False
    if text.startswith('"'):
        if len(text) >= 2 and text.endswith('"'):
            return text[1:-1], True
        return "", False
    return text, True


def _next(rune: str, state: _State) -> tuple[_State, str]:
    space, newline = rune in " \t", rune in "\r\n"
    if state is _State.NIL:
        if rune == "#":
            return _State.COMMENT, ""
        if space or newline:
            return _State.NIL, ""
        return _State.NAME, rune
    if state is _State.NAME:
        if rune.isascii() and rune.isalpha():
            return _State.NAME, rune
        if space:
            return _State.VALUE, ""
        raise ModelfileSyntaxError("invalid command")
    if state is _State.VALUE:
        return (_State.NIL if space or newline else _State.VALUE), rune
    if state in (_State.PARAMETER, _State.MESSAGE):
        word = rune.isascii() and (rune.isalnum() or (rune == "_" and state is _State.PARAMETER))
        if word and (state is _State.PARAMETER or rune.isalpha()):
            return state, rune
        if space:
            return _State.VALUE, ""
        raise ModelfileSyntaxError("unexpected end of a name")
    return (_State.NIL if newline else _State.COMMENT), ""


def parse(text: str) -> list[tuple[str, str]]:
    """The (instruction, value) pairs Ollama reads from ``text``; PARAMETER gives its name."""
    commands: list[tuple[str, str]] = []
    name, role, buffer, state = "", "", "", _State.NIL
    for rune in text:
        following, rune = _next(rune, state)
        if following is not state:
            if state is _State.NAME:
                word = buffer.lower()
                if word not in COMMANDS:
                    raise ModelfileSyntaxError(f"invalid command {buffer!r}")
                following = {"parameter": _State.PARAMETER, "message": _State.MESSAGE}.get(
                    word, following
                )
                name = "model" if word == "from" else word
            elif state is _State.PARAMETER:
                name = buffer
            elif state is _State.MESSAGE:
                role = buffer
            elif state is _State.VALUE:
                value, ok = _unquote(buffer.strip())
                if not ok or rune in " \t":
                    buffer += rune
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buffer, state = "", following
        if rune and rune.isprintable():
            buffer += rune
    if state is _State.VALUE:
        value, ok = _unquote(buffer.strip())
        if not ok:
            raise ModelfileSyntaxError("unexpected end of file inside a quoted value")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in (_State.NIL, _State.COMMENT):
        raise ModelfileSyntaxError("unexpected end of file")
    return commands
