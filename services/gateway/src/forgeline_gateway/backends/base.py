"""The one interface every backend adapter implements, and what adapters declare.

An adapter does two jobs:

* **placement**: `place` makes a deployment servable (starts llama-server processes, loads a LoRA
  adapter into vLLM, pushes a GGUF into Ollama) and returns where to send requests;
  `release` undoes it.
* **inference contract**: `capabilities` says which endpoints a deployment answers and which
  request parameters the backend honours; `prepare` turns the checked parameters into the body
  the backend expects. All three backends speak OpenAI's HTTP API for inference, so the routing
  and streaming code is shared and knows nothing about any one of them.

A parameter outside a deployment's capabilities is an OpenAI 400 naming it: never dropped. The
exceptions are bookkeeping parameters (`BOOKKEEPING_PARAMS`), which change nothing in what is
generated: accepted everywhere, never sent to a backend.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from forgeline_kit.errors import InvalidArgument

__all__ = [
    "BOOKKEEPING_PARAMS",
    "GATEWAY_PARAMS",
    "OPENAI_SERVER_PARAMS",
    "Backend",
    "Capabilities",
    "Endpoint",
    "Placement",
    "is_readable_file",
]


class Endpoint(enum.StrEnum):
    """An inference endpoint of the OpenAI API, by its path."""

    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"

    @property
    def label(self) -> str:
        """A short name for logs and metric labels."""
        return {"/v1/chat/completions": "chat", "/v1/completions": "completions"}.get(
            self.value, "embeddings"
        )


#: Parameters that only describe a request (who asks, labels, OpenAI-side storage and processing
#: tier) and change nothing in the answer: accepted on every endpoint and backend, never sent
#: upstream. The gateway stores no completions, so ``store: true`` is accepted and ignored.
BOOKKEEPING_PARAMS = frozenset({"user", "metadata", "store", "service_tier"})

_OPENAI_SAMPLING = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
    }
)

#: By endpoint, the parameters that llama-server and vLLM both take as OpenAI defines them (and
#: ``chat_template_kwargs``, which both add to chat), so the gateway forwards them to either
#: unchanged; each backend adds its own.
OPENAI_SERVER_PARAMS: Mapping[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: _OPENAI_SAMPLING
    | {
        "messages",
        "max_completion_tokens",
        "top_logprobs",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "chat_template_kwargs",
    },
    Endpoint.COMPLETIONS: _OPENAI_SAMPLING | {"prompt"},
}

#: Parameters the gateway itself handles on every endpoint and backend.
GATEWAY_PARAMS = frozenset({"model", "stream", "stream_options"}) | BOOKKEEPING_PARAMS

# Values that ask for nothing beyond the default: always honoured, even by a backend that does
# not know the parameter (it is then left out of the upstream body).
_NEUTRAL: Mapping[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "echo": (False,),
    "best_of": (1,),
    "parallel_tool_calls": (True,),
    "tool_choice": ("auto",),
    "encoding_format": ("float",),
}
# Parameters that ask for nothing unless the request names tools.
_TOOL_OPTIONS = frozenset({"parallel_tool_calls"})


def _is_neutral(name: str, value: Any) -> bool:
    # Compared with their types: 0 == False in Python, but logprobs=0 asks for something.
    return any(type(value) is type(v) and value == v for v in _NEUTRAL.get(name, ()))


@dataclass(frozen=True)
class Capabilities:
    """What one deployment answers: each endpoint with the parameters it honours.

    Attributes:
        params: endpoint → the request parameters the backend honours there (besides
            `GATEWAY_PARAMS`).
        max_n: the largest ``n`` (choices per request) the backend produces.
    """

    params: Mapping[Endpoint, frozenset[str]]
    max_n: int = 1

    def check(self, endpoint: Endpoint, model: str, backend: str, body: Mapping[str, Any]) -> None:
        """Refuse `body` (the parameters a client set) unless the backend honours all of it.

        Raises:
            InvalidArgument: naming the first parameter that cannot be honoured.
        """
        honoured = self.params.get(endpoint)
        if honoured is None:
            raise InvalidArgument(
                f"The model '{model}' does not support {endpoint.value}; it serves "
                + ", ".join(sorted(e.value for e in self.params)),
                field="model",
            )
        tools = bool(body.get("tools"))
        for name, value in body.items():
            if name in GATEWAY_PARAMS or _is_neutral(name, value):
                continue
            if name in _TOOL_OPTIONS and not tools:
                continue
            if name not in honoured:
                raise InvalidArgument(
                    f"The parameter '{name}' is not supported by the model '{model}' "
                    f"(served by {backend}); remove it or choose another model.",
                    field=name,
                )
        n = body.get("n")
        if isinstance(n, int) and n > self.max_n:
            raise InvalidArgument(
                f"The model '{model}' (served by {backend}) returns at most {self.max_n} "
                f"choice{'s' if self.max_n > 1 else ''} per request; 'n' was {n}.",
                field="n",
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            raise InvalidArgument(
                "The 'stream_options' parameter is only allowed when 'stream' is true.",
                field="stream_options",
            )

    def upstream_params(self, endpoint: Endpoint, body: Mapping[str, Any]) -> dict[str, Any]:
        """`body` without bookkeeping and without the neutral parameters the backend does not
        know."""
        honoured = self.params.get(endpoint, frozenset())
        return {
            name: value
            for name, value in body.items()
            if name not in BOOKKEEPING_PARAMS and (name in GATEWAY_PARAMS or name in honoured)
        }


def is_readable_file(path: Path) -> bool:
    """Whether `path` names a regular file (False for names the OS refuses, such as too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


@dataclass
class Placement:
    """Where a placed deployment is served.

    Attributes:
        urls: base URLs (``http://127.0.0.1:PORT``) of the instances serving it; each speaks
            OpenAI's HTTP API under ``/v1``.
        upstream_model: the name to send as ``model`` to those instances.
        handles: whatever the adapter needs to release the placement (processes, names).
        request_fields: fields added to the body of every inference request sent for the
            deployment, over what the client sent (llama.cpp: the ``lora`` selection of a
            deployment served on a shared base, `backends/llamacpp.py`). Set by the backend
            with the placement, so a request always carries the selection of the processes
            its route leads to.
        slots: requests each instance (by URL) generates for at once, where the backend
            knows it (llama-server: its slots); admission to the instance is sized to it, so
            overload gets a fast 429 instead of a queue inside the server.
    """

    urls: list[str]
    upstream_model: str
    handles: list[Any] = field(default_factory=list)
    request_fields: dict[str, Any] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)


SpecT = TypeVar("SpecT")


class Backend(ABC, Generic[SpecT]):
    """A kind of inference server the gateway can place models on and route requests to."""

    #: The name in deployment specs, logs and metric labels.
    kind: ClassVar[str]

    @abstractmethod
    def capabilities(self, spec: SpecT) -> Capabilities:
        """What a deployment made from `spec` answers and honours."""

    @abstractmethod
    async def place(self, name: str, spec: SpecT) -> Placement:
        """Make `spec` servable under the public model name `name`.

        Raises:
            ForgelineError: a user-fixable problem (missing file, backend refused the model).
        """

    @abstractmethod
    async def release(self, name: str, spec: SpecT, placement: Placement) -> None:
        """Undo `place`; must not fail if the backend already forgot the model."""

    def check(self, endpoint: Endpoint, model: str, params: dict[str, Any]) -> None:
        """Refuse values the backend cannot honour for parameters it knows (default: none).

        Raises:
            InvalidArgument: naming the parameter.
        """

    def prepare(self, endpoint: Endpoint, model: str, params: dict[str, Any]) -> dict[str, Any]:
        """Adjust checked parameters to the backend's dialect for deployment `model` (default:
        unchanged)."""
        return params

    async def close(self) -> None:
        """Release what the adapter holds (processes it started); called at shutdown."""
