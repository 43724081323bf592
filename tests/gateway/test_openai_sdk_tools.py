"""Tool calling and the bookkeeping parameters agents send, through the official `openai` SDK,
against the gateway over real llama-server processes serving the tiny model.

The tiny model's weights are random, so the tests leave it no choice: `tool_choice` forces a
call, each function's one argument is an enum (the grammar writes it), greedy decoding keeps the
answer the same every run, and a logit bias on its end-of-turn token ends the answer as soon as
the grammar allows (a random model would otherwise go on to a second call).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolParam,
)

from forgeline_gateway.backends.llamacpp import LlamaCppBackend
from forgeline_kit.llamacpp import Toolchain
from forgeline_kit.llamacpp.server import LlamaServerOptions, start_llama_server
from forgeline_kit.tinymodel import TinyModelSpec

from .conftest import Served

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}
CLOCK: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC"]}},
            "required": ["zone"],
        },
    },
}
# Enough for a call padded with the whitespace the grammar allows (about 130 tokens greedy).
CALL_TOKENS = 300
FORCED: dict[str, Any] = {
    "temperature": 0,
    "max_tokens": CALL_TOKENS,
    "logit_bias": {str(TinyModelSpec().eos_token_id): 100},
}


@pytest.fixture(scope="module")
def plain(
    served: Served,
    tiny_gguf: Path,
    llamacpp_toolchain: Toolchain,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The tiny model on a llama-server told to use llama.cpp's built-in ChatML template, which
    has no tools: attached to the gateway as "tiny-plain"."""
    options = LlamaServerOptions(model=tiny_gguf, extra_args=("--chat-template", "chatml"))
    log = tmp_path_factory.mktemp("plain") / "llama-server.log"
    with start_llama_server(options, log, toolchain=llamacpp_toolchain) as server:
        served.deploy({"name": "tiny-plain", "backend": "llamacpp", "urls": [server.base_url]})
        try:
            yield "tiny-plain"
        finally:
            served.admin("DELETE", "/v1/deployments/tiny-plain")


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    error: dict[str, Any] = exc.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def _streamed_calls(stream: Iterator[Any]) -> tuple[list[dict[str, str]], str | None]:
    """The tool calls a stream's deltas add up to (as OpenAI's clients reassemble them), and
    the finish reason."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[index] for index in sorted(calls)], finish


def _calls(answer: ChatCompletion) -> list[tuple[str, Any]]:
    """The function calls of an answer's first choice: name and parsed arguments."""
    return [
        (call.function.name, json.loads(call.function.arguments))
        for call in answer.choices[0].message.tool_calls or []
        if isinstance(call, ChatCompletionMessageFunctionToolCall)
    ]


def test_the_tiny_models_template_carries_tool_calls(served: Served) -> None:
    backend = served.gateway.app.state.manager.backends["llamacpp"]
    assert isinstance(backend, LlamaCppBackend)

    tools = backend.template_tools("tiny")

    assert tools.supported is True
    assert tools.call_opener == "<tool_call>\n"


def test_required_tool_choice_answers_with_a_tool_call(served: Served) -> None:
    answer = served.client().chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], tool_choice="required", **FORCED
    )

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    [call] = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Oslo"}
    assert answer.usage is not None
    assert answer.usage.completion_tokens < CALL_TOKENS


def test_required_tool_choice_streamed_reassembles_into_a_call(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
        **FORCED,
    )

    calls, finish = _streamed_calls(stream)

    assert finish == "tool_calls"
    [call] = calls
    assert call["id"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"])["city"] in {"Paris", "Oslo"}


def test_a_named_function_is_the_one_called(served: Served) -> None:
    client = served.client()
    choice: ChatCompletionToolChoiceOptionParam = {
        "type": "function",
        "function": {"name": "get_time"},
    }
    answer = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=choice, **FORCED
    )
    stream = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER, CLOCK],
        tool_choice=choice,
        stream=True,
        **FORCED,
    )

    assert answer.choices[0].finish_reason == "tool_calls"
    assert _calls(answer) == [("get_time", {"zone": "UTC"})]
    streamed, finish = _streamed_calls(stream)
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
        ("get_time", {"zone": "UTC"})
    ]


def test_auto_tool_choice_is_accepted(served: Served) -> None:
    answer = served.client().chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=4
    )

    assert answer.choices[0].finish_reason in {"length", "stop", "tool_calls"}


def test_the_tool_result_goes_back_in_the_next_request(served: Served) -> None:
    client = served.client()
    first = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], tool_choice="required", **FORCED
    )
    [call] = first.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)

    follow_up: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    answer = client.chat.completions.create(
        model="tiny", messages=follow_up, tools=[WEATHER], max_tokens=4, temperature=0
    )
    streamed = list(
        client.chat.completions.create(
            model="tiny", messages=follow_up, max_tokens=4, temperature=0, stream=True
        )
    )

    assert answer.choices[0].message.content
    assert answer.usage is not None
    # The call and its result are in the prompt: longer than the question alone.
    assert answer.usage.prompt_tokens > (first.usage.prompt_tokens if first.usage else 0)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_a_template_without_tools_refuses_them_naming_tools(served: Served, plain: str) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model=plain, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=4
        )
    with pytest.raises(openai.BadRequestError) as history:
        client.chat.completions.create(
            model=plain,
            messages=[
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "clear"},
            ],
            max_tokens=4,
        )

    assert _error(tools.value)["param"] == "tools"
    assert "chat template" in _error(tools.value)["message"]
    assert _error(history.value)["param"] == "messages[1].tool_calls"
    # Without tools the model serves as before.
    answer = client.chat.completions.create(model=plain, messages=ASK, max_tokens=3)
    assert answer.choices[0].message.content


def test_tool_choice_must_match_the_tools(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=4,
        )
    with pytest.raises(openai.BadRequestError) as no_tools:
        client.chat.completions.create(
            model="tiny", messages=ASK, tool_choice="required", max_tokens=4
        )

    assert _error(unknown.value)["param"] == "tool_choice"
    assert "get_time" in _error(unknown.value)["message"]
    assert _error(no_tools.value)["param"] == "tool_choice"


@pytest.mark.parametrize(
    "bookkeeping",
    [
        {"metadata": {"team": "search", "run": "42"}},
        {"user": "user-1234"},
        {"store": False},
        {"store": True},
        {"service_tier": "auto"},
        {"parallel_tool_calls": False},
    ],
)
def test_bookkeeping_parameters_are_accepted(served: Served, bookkeeping: dict[str, Any]) -> None:
    client = served.client()

    answer = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, **bookkeeping)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=ASK, max_tokens=2, stream=True, **bookkeeping
        )
    )

    assert answer.choices[0].message.content is not None
    assert chunks


def test_bookkeeping_values_are_still_checked(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(
            model="tiny", messages=ASK, max_tokens=2, metadata={str(i): "x" for i in range(17)}
        )

    assert _error(caught.value)["param"] == "metadata"
