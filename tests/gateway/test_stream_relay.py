"""The stream relay on its own: backends' event streams in, OpenAI's out, whatever the chunking."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forgeline_gateway.backends.base import Capabilities, Endpoint
from forgeline_gateway.errors import param_from_loc
from forgeline_gateway.sse import StreamRelay
from forgeline_kit.errors import InvalidArgument


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(index: int, text: str, **extra: Any) -> dict[str, Any]:
    choice = {"index": index, "text": text, "finish_reason": None}
    return {"id": "c1", "object": "text_completion", "created": 1, "model": "up",
            "choices": [choice], **extra}  # fmt: skip


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


# llama-server's completions stream with n=2: usage rides on each choice's last chunk.
LLAMA_N2 = (
    _event(_chunk(0, "a"))
    + _event(_chunk(1, "b"))
    + _event(_chunk(0, "", usage=_usage(3, 2), timings={"x": 1}))
    + _event(_chunk(1, "", usage=_usage(3, 2)))
    + b"data: [DONE]\n\n"
)


def _relay_all(relay: StreamRelay, data: bytes, size: int) -> bytes:
    out = b"".join(relay.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + relay.finish()


def _events(out: bytes) -> list[Any]:
    assert out.endswith(b"\n\n")
    events = out.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events)
    return [e[6:].decode() if e == b"data: [DONE]" else json.loads(e[6:]) for e in events]


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_usage_is_merged_into_one_last_chunk_whatever_the_chunking(size: int) -> None:
    events = _events(_relay_all(StreamRelay(include_usage=True, n=2), LLAMA_N2, size))

    *content, usage, done = events
    assert done == "[DONE]"
    assert [c["choices"][0]["text"] for c in content] == ["a", "b", "", ""]
    assert all("usage" not in c and "timings" not in c for c in content)
    assert usage["choices"] == []
    assert usage["usage"] == _usage(3, 4)  # the prompt counted once, both choices' tokens
    assert usage["id"] == "c1"
    assert usage["object"] == "text_completion"


def test_without_include_usage_the_usage_is_counted_but_not_sent() -> None:
    relay = StreamRelay(include_usage=False, n=2)
    events = _events(_relay_all(relay, LLAMA_N2, 50))

    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert (relay.prompt_tokens, relay.completion_tokens) == (3, 4)


def test_events_without_usage_pass_through_byte_for_byte() -> None:
    data = _event(_chunk(0, "a")) + b": ping\n\n" + _event(_chunk(0, "b")) + b"data: [DONE]\n\n"
    relay = StreamRelay(include_usage=False)

    assert _relay_all(relay, data, 5) == data


def test_model_is_rewritten_in_every_event() -> None:
    relay = StreamRelay(include_usage=True, model="public")
    data = (
        _event(_chunk(0, "a"))
        + _event({**_chunk(0, ""), "choices": [], "usage": _usage(1, 1)})
        + b"data: [DONE]\n\n"
    )

    events = _events(_relay_all(relay, data, 9))

    assert [e["model"] for e in events[:-1]] == ["public", "public"]


def test_a_stream_that_ends_without_done_is_completed() -> None:
    relay = StreamRelay(include_usage=False)

    out = relay.feed(_event(_chunk(0, "a"))) + relay.feed(b'data: {"id"') + relay.finish()

    assert out.endswith(b"data: [DONE]\n\n")


def test_capabilities_refuse_what_the_backend_cannot_honour() -> None:
    caps = Capabilities({Endpoint.CHAT: frozenset({"messages", "n", "logprobs"})}, max_n=2)
    chat = {"model": "m", "messages": [], "stream": True, "user": "u"}

    caps.check(Endpoint.CHAT, "m", "b", chat)
    caps.check(Endpoint.CHAT, "m", "b", {**chat, "n": 2, "logprobs": True})
    with pytest.raises(InvalidArgument) as unknown:
        caps.check(Endpoint.CHAT, "m", "b", {**chat, "top_k": 3})
    with pytest.raises(InvalidArgument) as too_many:
        caps.check(Endpoint.CHAT, "m", "b", {**chat, "n": 3})
    with pytest.raises(InvalidArgument) as endpoint:
        caps.check(Endpoint.EMBEDDINGS, "m", "b", {"model": "m", "input": "x"})

    assert unknown.value.field == "top_k"
    assert too_many.value.field == "n"
    assert endpoint.value.field == "model"


def test_default_values_of_unknown_parameters_are_honoured_and_left_out() -> None:
    caps = Capabilities({Endpoint.COMPLETIONS: frozenset({"prompt"})})
    body = {"model": "m", "prompt": "p", "n": 1, "echo": False, "best_of": 1}

    caps.check(Endpoint.COMPLETIONS, "m", "b", body)
    with pytest.raises(InvalidArgument):
        caps.check(Endpoint.COMPLETIONS, "m", "b", {**body, "logprobs": 0})  # 0 asks for some

    assert caps.upstream_params(Endpoint.COMPLETIONS, body) == {"model": "m", "prompt": "p"}


def test_bookkeeping_parameters_are_accepted_everywhere_and_never_sent() -> None:
    caps = Capabilities({Endpoint.CHAT: frozenset({"messages", "tools"})})
    bookkeeping = {"user": "u", "metadata": {"k": "v"}, "store": True, "service_tier": "flex"}
    body = {"model": "m", "messages": [], **bookkeeping}

    caps.check(Endpoint.CHAT, "m", "b", body)
    # Tool options ask for nothing without tools; "auto" is the default with them.
    caps.check(Endpoint.CHAT, "m", "b", {**body, "parallel_tool_calls": False})
    caps.check(Endpoint.CHAT, "m", "b", {**body, "tools": [{}], "tool_choice": "auto"})
    with pytest.raises(InvalidArgument) as parallel:
        caps.check(Endpoint.CHAT, "m", "b", {**body, "tools": [{}], "parallel_tool_calls": False})

    assert parallel.value.field == "parallel_tool_calls"
    assert caps.upstream_params(Endpoint.CHAT, {**body, "tool_choice": "auto"}) == {
        "model": "m",
        "messages": [],
    }


@pytest.mark.parametrize(
    ("loc", "body", "param"),
    [
        (("body", "temperature"), {"temperature": 9}, "temperature"),
        (("body", "messages", 0, "user", "content"), {"messages": [{"role": "user"}]},
         "messages[0].content"),
        (("body", "messages", 1, "assistant", "tool_calls", 0, "id"),
         {"messages": [{}, {"tool_calls": [{}]}]}, "messages[1].tool_calls[0].id"),
        (("body", "stop", "str"), {"stop": 5}, "stop"),
        (("body",), None, None),
    ],
)  # fmt: skip
def test_validation_errors_name_the_parameter_as_openai_does(
    loc: tuple[Any, ...], body: Any, param: str | None
) -> None:
    assert param_from_loc(loc, body) == param
