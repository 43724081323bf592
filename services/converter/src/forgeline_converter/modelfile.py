"""Ollama Modelfiles whose TEMPLATE is derived from the model's own (Jinja) chat template.

The derivation renders the chat template on probe conversations and reads off, for each role,
the text written before and after a message's content, and the generation prompt. That holds
for templates that format each message on its own (ChatML, Llama-2-free-form, Zephyr ...); a
template whose output for one message depends on the others (the first user turn folded into
the system prompt, say) is refused with a message asking for a template override.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Final

import jinja2.sandbox
from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from forgeline_converter.errors import ConversionError

ROLES = ("system", "user", "assistant")
_MARK = "\ue000FORGELINE-CONTENT\ue001"


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: str
    content: str


class RoleFormat(BaseModel):
    """The text a template writes around one message's content."""

    model_config = ConfigDict(frozen=True)

    prefix: str
    suffix: str


class ChatFormat(BaseModel):
    """A chat template reduced to per-role framing plus the generation prompt."""

    model_config = ConfigDict(frozen=True)

    roles: dict[str, RoleFormat]
    generation_prompt: str

    def stop_sequences(self, eos_token: str | None = None) -> list[str]:
        """Where generation must stop: the end of an assistant turn (and the EOS token)."""
        stops = [self.roles["assistant"].suffix.strip()]
        if eos_token:
            stops.append(eos_token)
        return [s for s in dict.fromkeys(stops) if s]


class TemplateNotDerivable(ConversionError):  # noqa: N818 (the reason a conversion stops)
    """The chat template cannot be expressed as a per-message Ollama template."""

    reason = "verification_failed"


def render_chat_template(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """Render a Hugging Face chat template as transformers does (sandboxed Jinja)."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
    )
    return environment.from_string(template).render(
        messages=[m.model_dump() for m in messages],
        add_generation_prompt=add_generation_prompt,
        **(special_tokens or {}),
    )


def derive_chat_format(template: str, special_tokens: dict[str, str] | None = None) -> ChatFormat:
    """Per-role prefix and suffix and the generation prompt of a Jinja chat template.

    Raises:
        TemplateNotDerivable: the template frames messages depending on their neighbours.
    """

    def render(messages: Sequence[Message], prompt: bool = False) -> str:
        try:
            return render_chat_template(
                template, messages, add_generation_prompt=prompt, special_tokens=special_tokens
            )
        except jinja2.TemplateError as error:
            raise TemplateNotDerivable(
                f"the chat template cannot be rendered ({error}); give a template override"
            ) from error

    roles: dict[str, RoleFormat] = {}
    for role in ROLES:
        text = render([Message(role=role, content=_MARK)])
        if text.count(_MARK) != 1:
            raise TemplateNotDerivable(f"the chat template does not write a {role} message once")
        prefix, suffix = text.split(_MARK)
        roles[role] = RoleFormat(prefix=prefix, suffix=suffix)
    generation_prompt = render([], prompt=True)
    probe = [
        Message(role=role, content=f"{role}-{index}")
        for index, role in enumerate(("system", "user", "assistant", "user"))
    ]
    pieces = "".join(roles[m.role].prefix + m.content + roles[m.role].suffix for m in probe)
    if render(probe, prompt=True) != pieces + generation_prompt:
        raise TemplateNotDerivable(
            "the chat template formats a message depending on the others; Ollama's template "
            "cannot be derived from it: give a template override"
        )
    return ChatFormat(roles=roles, generation_prompt=generation_prompt)


def _literal(text: str) -> str:
    # Go templates have no escape for "{{" in text, so it is written as a string action.
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(chat: ChatFormat) -> str:
    """The Go template Ollama renders over ``.Messages`` to give the same text as ``chat``."""
    branches = []
    for index, role in enumerate(ROLES):
        keyword = "if" if index == 0 else "else if"
        framing = chat.roles[role]
        branches.append(
            f'{{{{ {keyword} eq .Role "{role}" }}}}'
            f"{_literal(framing.prefix)}{{{{ .Content }}}}{_literal(framing.suffix)}"
        )
    return (
        "{{ range .Messages }}"
        + "".join(branches)
        + "{{ end }}{{ end }}"
        + _literal(chat.generation_prompt)
    )


#: What Ollama's Modelfile parser reads as a PARAMETER name (parser/parser.go, stateParameter).
PARAMETER_NAME: Final = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Ollama's parser silently drops non-printable characters, and reads a carriage return as a line
# end: of the control characters only tab and newline are read back as given.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_WORD = re.compile(r"^[A-Za-z0-9._+-]+$")


class ModelfileParameter(BaseModel):
    """One PARAMETER line: a name Ollama's parser reads as one, a value it reads back whole."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, StringConstraints(pattern=PARAMETER_NAME.pattern)]
    value: str

    @field_validator("value")
    @classmethod
    def _quotable(cls, value: str) -> str:
        modelfile_value(value)
        return value


def modelfile_value(value: str) -> str:
    """``value`` written so that Ollama's parser reads back exactly ``value`` and nothing else.

    Ollama's Modelfile has no escape sequences (parser/parser.go, ``unquote``): a value is a bare
    word, ``"..."`` or a triple-quoted string, and it ends at the first line end after which
    what was read unquotes. So a value with a quote in it goes in triple quotes (which cannot
    close early: the value holds no triple quote), anything else but a plain word in double
    quotes: a newline or quote inside can never end the value and start a new instruction
    (``FROM``, ``ADAPTER``) in the file.

    Raises:
        ValueError: the value holds a triple quote or a control character, which no quoting
            can carry.
    """
    if '"""' in value:
        raise ValueError('a Modelfile value cannot contain """ (Ollama has no escape for it)')
    if _CONTROL.search(value):
        raise ValueError(
            "a Modelfile value cannot contain control characters other than tab and newline"
        )
    if _WORD.match(value):
        return value
    return f'"""{value}"""' if '"' in value else f'"{value}"'


def _quoted(value: str) -> str:
    """TEMPLATE and SYSTEM text: always triple-quoted, as people write them."""
    _value(value)
    return f'"""{value}"""'


def _value(value: str) -> str:
    try:
        return modelfile_value(value)
    except ValueError as error:
        raise ConversionError(str(error)) from error


def render_modelfile(
    gguf_name: str,
    template: str,
    stops: Sequence[str],
    *,
    system: str | None = None,
    parameters: Sequence[ModelfileParameter] = (),
) -> str:
    """The Modelfile text: FROM, TEMPLATE, stop PARAMETERs, then SYSTEM and extra PARAMETERs."""
    lines = [f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(template)}"]
    lines += [f"PARAMETER stop {_value(stop)}" for stop in stops]
    lines += [f"PARAMETER {p.name} {_value(p.value)}" for p in parameters]
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    return "\n".join(lines) + "\n"
