"""`/v1/responses`: OpenAI's Responses API over the deployments' chat completions.

The official SDK over real HTTP, against real llama-server processes (the tiny model) and the
vLLM contract fake; then the translation on its own (tool calls, input items, failures), where
backends that call tools on demand are not at hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fakes.server import FakeServer
from fakes.vllm import FakeVllm
from openai.types.responses import ResponseFunctionToolCall
from prometheus_client.parser import text_string_to_metric_families

from forgeline_gateway.api.chat.protocol import ChatCompletion
from forgeline_gateway.api.responses.protocol import ResponsesRequest
from forgeline_gateway.api.responses.translate import (
    ResponsesTranslation,
    chat_request,
)
from forgeline_kit.errors import InvalidArgument

from .conftest import Served, StartGateway

TEXT_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def _shape(types: list[str]) -> list[str]:
    """The event types with the run of text deltas folded into one."""
    folded: list[str] = []
    for kind in types:
        if not (folded and kind == folded[-1] == "response.output_text.delta"):
            folded.append(kind)
    return folded


def _text_stream(last: str) -> list[str]:
    return [
        "response.created",
        "response.in_progress",
        *TEXT_EVENTS[:2],
        "response.output_text.delta",
        *TEXT_EVENTS[2:],
        last,
    ]


def _check_stream(events: list[Any], last: str) -> Any:
    """Check a streamed response's events as the SDK parsed them; return the final response."""
    assert _shape([e.type for e in events]) == _text_stream(last)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    [done] = [e for e in events if e.type == "response.output_text.done"]
    final = events[-1].response
    assert events[0].response.status == "in_progress"
    assert events[0].response.id == final.id
    assert deltas
    assert deltas == done.text == final.output_text
    assert final.usage is not None
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0
    assert final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens
    return final


# --- llama-server ------------------------------------------------------------------------------


def test_a_response_from_llama_server_cut_off_by_max_output_tokens(served: Served) -> None:
    # Greedy and cut off: the random tiny model does not stop by itself within 5 tokens.
    response = served.client().responses.create(
        model="tiny", input="hello", max_output_tokens=5, temperature=0
    )

    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.model == "tiny"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    [message] = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert response.output_text
    assert response.usage is not None
    assert response.usage.output_tokens == 5
    assert response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + 5
    assert response.max_output_tokens == 5
    assert response.temperature == 0
    assert response.created_at > 0


def test_a_streamed_response_from_llama_server(served: Served) -> None:
    client = served.client()
    events = list(
        client.responses.create(
            model="tiny", input="hello", max_output_tokens=6, temperature=0, stream=True
        )
    )
    answered = client.responses.create(
        model="tiny", input="hello", max_output_tokens=6, temperature=0
    )

    final = _check_stream(events, "response.incomplete")
    assert final.status == "incomplete"
    assert final.usage.output_tokens == 6
    assert final.output_text == answered.output_text  # greedy: streamed or not, the same answer
    assert answered.usage is not None
    assert final.usage.input_tokens == answered.usage.input_tokens


# With tool_choice "required", llama-server constrains the answer to a call of the tool with
# valid arguments (a grammar made from the schema), so even the random tiny model makes one.
WEATHER = {
    "type": "function",
    "name": "weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def test_a_function_call_from_llama_server_and_its_result_sent_back(served: Served) -> None:
    client = served.client()
    ask: dict[str, Any] = {
        "model": "tiny",
        "input": "Weather in Oslo?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_output_tokens": 100,
        "temperature": 0,
    }
    asked = client.responses.create(**ask)
    events: list[Any] = list(client.responses.create(**ask, stream=True))

    [call] = asked.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.name == "weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert call.call_id
    assert asked.tools[0].name == "weather"
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:-1] == ["response.function_call_arguments.done", "response.output_item.done"]
    assert "response.output_text.delta" not in types
    [streamed] = events[-1].response.output
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(deltas) == streamed.arguments == call.arguments
    assert events[2].item.name == "weather"

    answer = client.responses.create(
        model="tiny",
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {  # the model's call, passed back as the output item it was
                "type": "function_call",
                "id": call.id or "",
                "status": "completed",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        max_output_tokens=3,
    )
    alone = client.responses.create(model="tiny", input="Weather in Oslo?", max_output_tokens=1)
    assert answer.output[0].type == "message"
    assert answer.usage is not None
    assert alone.usage is not None
    assert answer.usage.input_tokens > alone.usage.input_tokens  # the call and its result too


def test_text_format_constrains_the_answer_on_llama_server(served: Served) -> None:
    client = served.client()
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    verdict = client.responses.create(
        model="tiny",
        input="ok?",
        text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}},
        max_output_tokens=30,
        temperature=0,
    )
    some_json = client.responses.create(
        model="tiny",
        input="ok?",
        text={"format": {"type": "json_object"}},
        max_output_tokens=30,
        temperature=0,
    )

    assert verdict.status == "completed"
    assert set(json.loads(verdict.output_text)) == {"ok"}
    assert verdict.text is not None
    assert verdict.text.format is not None
    assert verdict.text.format.type == "json_schema"
    assert isinstance(json.loads(some_json.output_text), dict)


def test_instructions_become_a_leading_system_message(served: Served) -> None:
    client = served.client()
    plain = client.responses.create(model="tiny", input="hello", max_output_tokens=2)
    instructed = client.responses.create(
        model="tiny", input="hello", instructions="Answer in French.", max_output_tokens=2
    )

    assert plain.instructions is None
    assert instructed.instructions == "Answer in French."
    assert plain.usage is not None
    assert instructed.usage is not None
    assert instructed.usage.input_tokens > plain.usage.input_tokens


def test_the_stream_is_framed_as_openai_frames_it(served: Served) -> None:
    body = {"model": "tiny", "input": "hello", "max_output_tokens": 3, "stream": True}
    headers = {"Authorization": f"Bearer {served.inference_key}"}
    with httpx.stream(
        "POST", f"{served.url}/v1/responses", json=body, headers=headers, trust_env=False
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()

    events = raw.split("\n\n")
    assert events.pop() == ""
    for event in events:
        head, data = event.split("\n")
        assert head.startswith("event: ")
        assert data.startswith("data: ")
        assert json.loads(data[len("data: ") :])["type"] == head[len("event: ") :]
    assert "[DONE]" not in raw  # the Responses API ends with its last event, not a marker


# --- the vLLM contract fake --------------------------------------------------------------------


@pytest.fixture
def vllm(start_gateway: StartGateway) -> Iterator[tuple[Served, FakeVllm]]:
    fake = FakeVllm("org/base")
    server = FakeServer(fake.app).start()
    served = start_gateway({"request_timeout_seconds": 1})
    served.deploy({"name": "m", "backend": "vllm", "base_model": "org/base", "urls": [server.url]})
    yield served, fake
    server.stop()


def test_responses_from_vllm_answered_and_streamed(vllm: tuple[Served, FakeVllm]) -> None:
    served, fake = vllm
    client = served.client()

    answered = client.responses.create(
        model="m",
        input="hello there",
        instructions="Be brief.",
        max_output_tokens=4,
        metadata={"ticket": "42"},
        user="u-1",
        service_tier="auto",
        store=False,
    )
    events = list(
        client.responses.create(
            model="m", input="hello", max_output_tokens=12, stream=True, extra_body={"stop": "."}
        )
    )
    stopped = client.responses.create(
        model="m", input="hello", max_output_tokens=8, extra_body={"stop": [" one"]}
    )

    assert answered.output_text == "Forgeline serves this answer"
    assert answered.status == "incomplete"  # the fake stops at max_tokens
    assert answered.model == "m"
    assert answered.metadata == {"ticket": "42"}
    assert answered.user == "u-1"
    assert answered.usage is not None
    assert answered.usage.output_tokens == 4
    first = fake.requests[0]
    assert first["model"] == "org/base"
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert first["max_tokens"] == 4
    assert not {"user", "metadata", "service_tier", "store", "input"} & set(first)

    final = _check_stream(events, "response.completed")
    assert final.status == "completed"
    assert final.incomplete_details is None
    assert final.output_text == "Forgeline serves this answer one word at a time"
    assert fake.requests[1]["stream"] is True
    assert fake.requests[1]["stream_options"] == {"include_usage": True}

    assert stopped.status == "completed"
    assert stopped.output_text == "Forgeline serves this answer"


def test_what_needs_a_stored_response_is_refused_by_name(vllm: tuple[Served, FakeVllm]) -> None:
    served, fake = vllm
    client = served.client()

    with pytest.raises(openai.BadRequestError) as previous:
        client.responses.create(model="m", input="hi", previous_response_id="resp_123")
    with pytest.raises(openai.BadRequestError) as stored:
        client.responses.create(model="m", input="hi", store=True)
    with pytest.raises(openai.BadRequestError) as chat_only:
        client.responses.create(model="m", input="hi", extra_body={"max_tokens": 3})
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(model="m", input="hi", extra_body={"bogus": 1})

    error = previous.value.response.json()["error"]
    assert error["param"] == "previous_response_id"
    assert error["type"] == "invalid_request_error"
    assert "'input'" in error["message"]
    assert stored.value.response.json()["error"]["param"] == "store"
    assert "store': false" in stored.value.response.json()["error"]["message"]
    assert chat_only.value.response.json()["error"]["param"] == "max_tokens"
    assert "max_output_tokens" in chat_only.value.response.json()["error"]["message"]
    assert unknown.value.response.json()["error"]["param"] == "bogus"  # as chat refuses it
    assert fake.requests == []


def test_an_unknown_model_is_a_404_as_chat_gives(vllm: tuple[Served, FakeVllm]) -> None:
    served, _ = vllm
    client = served.client()

    with pytest.raises(openai.NotFoundError) as responses:
        client.responses.create(model="nope", input="hi")
    with pytest.raises(openai.NotFoundError) as chat:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])

    assert responses.value.response.json() == chat.value.response.json()
    assert responses.value.response.json()["error"]["code"] == "model_not_found"


def test_inference_scope_is_required(vllm: tuple[Served, FakeVllm]) -> None:
    served, _ = vllm
    with pytest.raises(openai.AuthenticationError):
        served.client(key="sk-wrong").responses.create(model="m", input="hi")
    with pytest.raises(openai.PermissionDeniedError):
        served.client(key=served.admin_key).responses.create(model="m", input="hi")


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_responses_as_chat_is_counted(vllm: tuple[Served, FakeVllm]) -> None:
    served, _ = vllm
    client = served.client()
    client.responses.create(model="m", input="a b c", max_output_tokens=3)
    list(client.responses.create(model="m", input="a", max_output_tokens=5, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")

    samples = _samples(served.metrics())

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    ok = {"model": "m", "backend": "vllm"}
    requests = "forgeline_gateway_requests_total"
    assert value(requests, **ok, endpoint="responses", status="200") == 2
    assert value(requests, model="unknown", backend="none", endpoint="responses", status="404") == 1
    assert value(requests, **ok, endpoint="chat", status="200") == 0
    assert (
        value(
            "forgeline_gateway_request_duration_seconds_count",
            **ok,
            endpoint="responses",
            status="200",
        )
        == 2
    )
    assert value("forgeline_gateway_time_to_first_token_seconds_count", **ok, endpoint="responses")
    assert value("forgeline_gateway_completion_tokens_total", **ok) == 3 + 5
    assert value("forgeline_gateway_prompt_tokens_total", **ok) > 0
    assert value("forgeline_gateway_in_flight_requests", **ok) == 0


def test_a_backend_failing_mid_stream_ends_it_with_error_and_failed(
    vllm: tuple[Served, FakeVllm],
) -> None:
    served, fake = vllm
    fake.chunk_delay = 3.0  # past the gateway's 1 s wait for the next chunk

    events: list[Any] = list(
        served.client().responses.create(model="m", input="hi", max_output_tokens=5, stream=True)
    )

    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2:] == ["error", "response.failed"]
    assert events[-2].code == "backend_timeout"
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "server_error"
    assert failed.output_text == "Forgeline"  # what came before the failure
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_client_leaving_a_stream_cancels_it_at_the_backend(
    vllm: tuple[Served, FakeVllm],
) -> None:
    served, fake = vllm
    fake.chunk_delay = 0.2

    with httpx.stream(
        "POST",
        f"{served.url}/v1/responses",
        json={"model": "m", "input": "hi", "max_output_tokens": 50, "stream": True},
        headers={"Authorization": f"Bearer {served.inference_key}"},
        trust_env=False,
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())

    deadline = time.monotonic() + 10
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.cancelled == 1
    assert served.gateway.app.state.router.get("m").instances[0].in_flight == 0
    closed = {"model": "m", "backend": "vllm", "endpoint": "responses", "status": "499"}
    assert _samples(served.metrics())[
        ("forgeline_gateway_requests_total", frozenset(closed.items()))
    ]


# --- the translation on its own ----------------------------------------------------------------


def _request(**body: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **body})


def test_input_items_tools_and_formats_become_a_chat_request() -> None:
    weather = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = _request(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Q"}]},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_1",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ],
        tools=[{"type": "function", "name": "weather", "parameters": weather, "strict": True}],
        tool_choice={"type": "function", "name": "weather"},
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}},
        temperature=0.5,
        parallel_tool_calls=False,
        max_output_tokens=7,
        top_k=4,
    )

    chat = chat_request(body).upstream_params()

    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        for i in (1, 2)
    ]
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": weather, "strict": True},
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    assert chat["max_tokens"] == 7
    assert chat["temperature"] == 0.5
    assert chat["parallel_tool_calls"] is False
    assert chat["top_k"] == 4  # the backend's own parameters pass, as on chat
    assert "stream" not in chat
    json_object = chat_request(_request(text={"format": {"type": "json_object"}}))
    assert json_object.upstream_params()["response_format"] == {"type": "json_object"}
    assert (
        "response_format"
        not in chat_request(_request(text={"format": {"type": "text"}})).upstream_params()
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"store": True}, "store"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"truncation": "auto"}, "truncation"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        (
            {"input": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        chat_request(_request(**body))
    assert caught.value.field == param


def test_neutral_values_are_accepted() -> None:
    chat = chat_request(
        _request(
            store=False,
            background=False,
            include=[],
            truncation="disabled",
            reasoning={"effort": None},
            text={"verbosity": "medium"},
            top_logprobs=0,
            metadata={"a": "b"},
            service_tier="flex",
            user="u",
            safety_identifier="s",
            prompt_cache_key="k",
        )
    ).upstream_params()
    assert set(chat) == {"model", "messages"}


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage_chunk(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    return b"data: " + json.dumps({**body, "choices": [], "usage": usage}).encode() + b"\n\n"


def _translate(upstream: bytes, size: int, fail: bool = False) -> list[dict[str, Any]]:
    stream = ResponsesTranslation(_request(stream=True)).events()
    out = b"".join(stream.feed(upstream[i : i + size]) for i in range(0, len(upstream), size))
    out += stream.fail("broken", "server_error", "bad_gateway") if fail else stream.finish()
    events = []
    for event in out.split(b"\n\n")[:-1]:
        head, data = event.split(b"\n")
        payload = json.loads(data[len(b"data: ") :])
        assert head == b"event: " + payload["type"].encode()
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


TOOL_STREAM = (
    _chunk({"role": "assistant", "content": "Checking"})
    + _chunk({"content": "."})
    + _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                },
            ]
        }
    )
    + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})
    + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})
    + _chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "function": {"name": "time", "arguments": "{}"}}
            ]
        }
    )
    + _chunk({}, "tool_calls")
    + _usage_chunk(9, 12)
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 13, 10_000])
def test_a_streamed_tool_call_becomes_function_call_items(size: int) -> None:
    events = _translate(TOOL_STREAM, size)

    assert _shape([e["type"] for e in events]) == [
        "response.created",
        "response.in_progress",
        *TEXT_EVENTS[:2],
        "response.output_text.delta",
        *TEXT_EVENTS[2:],
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    message, weather, clock = final["output"]
    assert message["content"][0]["text"] == "Checking."
    assert weather == {
        "id": weather["id"],
        "type": "function_call",
        "status": "completed",
        "call_id": "call_a",
        "name": "weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert weather["id"].startswith("fc_")
    assert (clock["call_id"], clock["name"], clock["arguments"]) == ("call_b", "time", "{}")
    assert final["usage"]["input_tokens"] == 9
    assert final["usage"]["output_tokens"] == 12
    assert final["usage"]["total_tokens"] == 21
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]
    assert added[1]["item"]["arguments"] == ""
    assert added[1]["item"]["status"] == "in_progress"


def test_a_stream_that_fails_ends_with_error_and_response_failed() -> None:
    events = _translate(_chunk({"content": "Hi"}), 10_000, fail=True)

    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["code"] == "bad_gateway"
    assert events[-2]["message"] == "broken"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "broken"}
    assert failed["output"][0]["status"] == "incomplete"


def test_an_error_event_from_the_backend_fails_the_response() -> None:
    error = b'data: {"error": {"message": "engine died", "type": "x", "code": 500}}\n\n'
    events = _translate(_chunk({"content": "Hi"}) + error + _chunk({"content": "!"}), 10_000)

    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["message"] == "engine died"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hi"


def test_an_empty_answer_is_one_empty_message() -> None:
    events = _translate(_chunk({"role": "assistant"}, "stop") + b"data: [DONE]\n\n", 10_000)

    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        *TEXT_EVENTS,
        "response.completed",
    ]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_a_chat_answer_with_tool_calls_becomes_function_call_items() -> None:
    answer = ChatCompletion.model_validate(
        {
            "id": "x",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": "{}"},
                            },
                        ],
                    },
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
        }
    )
    body = _request(tools=[{"type": "function", "name": "weather"}], tool_choice="required")

    response = json.loads(ResponsesTranslation(body).answer(answer))

    assert response["status"] == "completed"
    [call] = response["output"]
    assert (call["type"], call["call_id"], call["name"]) == ("function_call", "call_1", "weather")
    assert response["tool_choice"] == "required"
    assert response["tools"][0]["name"] == "weather"
    assert response["usage"]["input_tokens"] == 4
    assert response["store"] is False
