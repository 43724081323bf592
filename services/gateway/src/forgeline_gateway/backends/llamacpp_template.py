"""What the chat template of a llama-server does with tools, as the server itself reports it.

`read_template_tools` asks a server when a deployment is placed (`LlamaCppBackend`,
``backends/llamacpp.py``, keeps the answer per deployment): whether the template can show
``tools`` to the model and write its calls (``/props`` ``chat_template_caps``), and, where it
can, the marker it writes before each call (``<tool_call>`` and a line break in the Hermes 2 Pro
and Qwen 2.5 format), read off the server's own rendering of a probe call (``/apply-template``)
and checked to be what the server continues as the start of an answer. The backend starts a
forced answer with that marker so the tools' grammar holds from its first token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["UNKNOWN_TOOLS", "TemplateTools", "read_template_tools"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TemplateTools:
    """What the chat template a llama-server applies does with tools, as the server reports it.

    Attributes:
        supported: the template shows ``tools`` to the model and writes its ``tool_calls``
            (``/props`` ``chat_template_caps``: ``supports_tools`` and ``supports_tool_calls``);
            None when the server did not say (an older llama-server, or it did not answer).
        call_opener: the text the template writes before the JSON of each call, which the
            gateway starts a forced answer with (``<tool_call>`` and a line break); empty
            where the template writes no such marker or the server does not continue an
            assistant message.
    """

    supported: bool | None
    call_opener: str = ""


UNKNOWN_TOOLS = TemplateTools(supported=None)

_PROBE_NAME = "forgeline_probe"
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": _PROBE_NAME,
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    },
}
_PROBE_USER: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
# Nine alphanumerics: Mistral's templates refuse other call ids (llama.cpp probes with this one).
_PROBE_CALL_ID = "call00001"
_PROBE_CALLED: list[dict[str, Any]] = [
    *_PROBE_USER,
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": _PROBE_CALL_ID,
                "type": "function",
                "function": {"name": _PROBE_NAME, "arguments": "{}"},
            }
        ],
    },
    # A turn after the call, so the server does not take the call as an answer to continue.
    {"role": "tool", "tool_call_id": _PROBE_CALL_ID, "content": "ok"},
]


async def read_template_tools(
    client: httpx.AsyncClient, url: str, limits: httpx.Timeout
) -> TemplateTools:
    """Ask the llama-server at `url` what its chat template does with tools.

    Never raises: a server that cannot say gives :data:`UNKNOWN_TOOLS` (requests then go to it
    as they are, and it decides).
    """
    try:
        response = await client.get(f"{url}/props", timeout=limits)
        response.raise_for_status()
        caps = response.json().get("chat_template_caps")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as error:
        log.warning("llama-server did not report its chat template", exc_info=error)
        return UNKNOWN_TOOLS
    if not isinstance(caps, dict):
        return UNKNOWN_TOOLS
    if not (caps.get("supports_tools") is True and caps.get("supports_tool_calls") is True):
        return TemplateTools(supported=False)
    try:
        opener = await _call_opener(client, url, limits)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, KeyError, TypeError) as error:
        log.warning("llama-server could not render a tool call", exc_info=error)
        opener = ""
    return TemplateTools(supported=True, call_opener=opener)


async def _call_opener(client: httpx.AsyncClient, url: str, limits: httpx.Timeout) -> str:
    """The text the template writes between the generation prompt and the JSON object of a call,
    checked to be what the server continues when given it as the start of the answer; "" if
    there is none."""

    async def render(messages: list[dict[str, Any]]) -> str:
        body = {"messages": messages, "tools": [_PROBE_TOOL]}
        response = await client.post(f"{url}/apply-template", json=body, timeout=limits)
        response.raise_for_status()
        return str(response.json()["prompt"])

    prompt = await render(_PROBE_USER)
    called = await render(_PROBE_CALLED)
    if not called.startswith(prompt):
        return ""
    rest = called[len(prompt) :]
    name_at = rest.find(f'"{_PROBE_NAME}"')
    start = rest.rfind("{", 0, name_at) if name_at > 0 else -1
    opener = rest[:start] if start > 0 else ""
    if not opener.strip():
        return ""  # the call is bare JSON (Llama 3.x): nothing to open the answer with
    continued = await render([*_PROBE_USER, {"role": "assistant", "content": opener}])
    return opener if continued == prompt + opener else ""
