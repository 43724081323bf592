"""Asking a deployed model for each row's answer: the prompt a ``completions`` data source
renders from the row, the sampling parameters it may set, and the `Sampler` that sends a chat
completion (the gateway wires its proxy in, so the request is routed, retried and counted as any
other)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from forgeline_gateway.evals.templates import Reference, Template
from forgeline_kit.errors import InvalidArgument

__all__ = [
    "SAMPLE_FIELDS",
    "SAMPLING_PARAMS",
    "Completion",
    "Prompt",
    "Sampler",
    "check_sampling_params",
    "sample_namespace",
]

#: What the ``sample`` namespace holds for a row the model answered.
SAMPLE_FIELDS: Final = ("output_text", "output_tools", "choices", "model", "finish_reason")

#: The sampling parameters a run may set, all sent with the chat completion.
SAMPLING_PARAMS: Final = ("temperature", "max_completion_tokens", "top_p", "seed")

_REFUSED_PARAMS: Final = {
    "response_format": "structured output is not graded here (the sample has no output_json)",
    "tools": "tool calls are not graded here",
    "reasoning_effort": "no backend of this gateway takes a reasoning effort",
    "text": "it belongs to the Responses API's data source",
}

_ROLES: Final = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
_TEXT_PARTS: Final = ("input_text", "output_text", "text")


@dataclass(frozen=True)
class Completion:
    """A model's answer to one row."""

    text: str
    model: str
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    choices: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class Sampler(Protocol):
    """Chat completions from the gateway's deployments."""

    def check_model(self, model: str) -> None:
        """Raises NotFound (404, ``model_not_found``) if no deployment has that name."""
        ...

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]
    ) -> Completion:
        """One chat completion, not streamed.

        Raises:
            InvalidArgument: the backend refused this request (the row's fault).
            ResourceExhausted: every instance is busy (retry later).
            Unavailable, DeadlineExceeded: the backend failed or did not answer in time.
            NotFound: the model is no longer deployed.
        """
        ...


def sample_namespace(completion: Completion) -> dict[str, Any]:
    """The ``sample`` namespace graders see for a model's answer."""
    return {
        "output_text": completion.text,
        "output_tools": completion.tool_calls,
        "choices": completion.choices,
        "model": completion.model,
        "finish_reason": completion.finish_reason,
    }


def check_sampling_params(params: Mapping[str, Any], *, param: str) -> dict[str, Any]:
    """The sampling parameters to send (those set), checked.

    Raises:
        InvalidArgument: a parameter this gateway does not take, or a bad value; names it.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        where = f"{param}.{key}"
        if key in _REFUSED_PARAMS:
            if value is None:
                continue
            raise InvalidArgument(
                f"'{where}' is not supported by this gateway's eval runs: {_REFUSED_PARAMS[key]}.",
                field=where,
            )
        if key not in SAMPLING_PARAMS:
            raise InvalidArgument(
                f"Unknown parameter: '{where}'; eval runs take {', '.join(SAMPLING_PARAMS)}.",
                field=where,
            )
        if value is None:
            continue
        if key in ("max_completion_tokens", "seed"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(
                    f"Invalid value for '{where}': must be an integer.", field=where
                )
            if key == "max_completion_tokens" and value < 1:
                raise InvalidArgument(
                    f"Invalid value for '{where}': must be at least 1.", field=where
                )
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(
                    f"Invalid value for '{where}': must be a number.", field=where
                )
            high = 2.0 if key == "temperature" else 1.0
            if not 0 <= value <= high:
                raise InvalidArgument(
                    f"Invalid value for '{where}': must be between 0 and {high:g}.", field=where
                )
        out[key] = value
    return out


@dataclass(frozen=True)
class _Message:
    role: str
    content: Template


@dataclass(frozen=True)
class Prompt:
    """How a ``completions`` data source turns a row into chat messages: a template of messages
    rendered with the row's ``item``, or a reference to a list of messages in the row."""

    messages: tuple[_Message, ...] = ()
    reference: Reference | None = None
    #: Where the template or reference was given (for errors).
    param: str = "data_source.input_messages"

    @classmethod
    def of(cls, spec: Mapping[str, Any], *, param: str) -> Prompt:
        """The prompt of an ``input_messages`` specification.

        Raises:
            InvalidArgument: an unknown type, a bad role, content that is not text, or a bad
                template; names the field under `param`.
        """
        kind = spec.get("type")
        if kind == "item_reference":
            text = spec.get("item_reference")
            if not isinstance(text, str):
                raise InvalidArgument(
                    f"Missing required parameter: '{param}.item_reference'.",
                    field=f"{param}.item_reference",
                )
            try:
                reference = Reference.parse(text.strip().removeprefix("{{").removesuffix("}}"))
            except ValueError as error:
                raise InvalidArgument(
                    f"Invalid value for '{param}.item_reference': {error}.",
                    field=f"{param}.item_reference",
                ) from None
            if reference.namespace != "item":
                raise InvalidArgument(
                    f"Invalid value for '{param}.item_reference': it must name a field of the "
                    "'item' namespace, as in 'item.messages'.",
                    field=f"{param}.item_reference",
                )
            return cls(reference=reference, param=f"{param}.item_reference")
        if kind != "template":
            raise InvalidArgument(
                f"Invalid value for '{param}.type': one of 'template', 'item_reference' "
                f"(got {kind!r}).",
                field=f"{param}.type",
            )
        template = spec.get("template")
        if not isinstance(template, Sequence) or isinstance(template, str) or not template:
            raise InvalidArgument(
                f"'{param}.template' must be a list of at least one message.",
                field=f"{param}.template",
            )
        messages = [
            _message(message, param=f"{param}.template[{i}]") for i, message in enumerate(template)
        ]
        return cls(messages=tuple(messages), param=f"{param}.template")

    @property
    def references(self) -> list[tuple[str, Reference]]:
        """Every reference, with the field that holds it."""
        if self.reference is not None:
            return [(self.param, self.reference)]
        return [
            (f"{self.param}[{i}].content", ref)
            for i, message in enumerate(self.messages)
            for ref in message.content.references
        ]

    def render(self, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chat messages for the row `item`.

        Raises:
            MissingVariable: a reference names nothing in the row.
            ValueError: an item reference that is not a list of messages with text content.
        """
        namespaces = {"item": item}
        if self.reference is None:
            return [
                {"role": m.role, "content": m.content.render(namespaces)} for m in self.messages
            ]
        value = self.reference.resolve(namespaces)
        if not isinstance(value, list) or not value:
            raise ValueError(f"{{{{{self.reference.text}}}}} is not a list of messages")
        out: list[dict[str, Any]] = []
        for index, message in enumerate(value):
            if not isinstance(message, Mapping):
                raise ValueError(f"{{{{{self.reference.text}}}}}[{index}] is not a message")
            role = _ROLES.get(str(message.get("role")))
            content = _text(message.get("content"))
            if role is None or content is None:
                raise ValueError(
                    f"{{{{{self.reference.text}}}}}[{index}] needs a role (system, developer, "
                    "user, assistant) and text content"
                )
            out.append({"role": role, "content": content})
        return out


def _message(spec: Any, *, param: str) -> _Message:
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"'{param}' must be a message object.", field=param)
    role = _ROLES.get(str(spec.get("role")))
    if role is None:
        raise InvalidArgument(
            f"Invalid value for '{param}.role': one of {', '.join(_ROLES)} "
            f"(got {spec.get('role')!r}).",
            field=f"{param}.role",
        )
    content = _text(spec.get("content"))
    if content is None:
        raise InvalidArgument(
            f"Invalid value for '{param}.content': text (a string, or input_text/output_text "
            "parts); images, audio and files are not supported.",
            field=f"{param}.content",
        )
    return _Message(role, Template.parse(content, param=f"{param}.content"))


def _text(content: Any) -> str | None:
    """Text content: a string, one text part, or a list of them (joined); None otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        if content.get("type") in _TEXT_PARTS and isinstance(content.get("text"), str):
            return str(content["text"])
        return None
    if isinstance(content, list) and content:
        parts = [_text(part) for part in content]
        if any(part is None for part in parts):
            return None
        return "".join(part for part in parts if part is not None)
    return None
