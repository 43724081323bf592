"""The official `openai` SDK against the gateway over real llama-server processes.

Everything a user of the SDK notices: answers, streams (as OpenAI frames them), usage, n, stop,
embeddings, and the error each mistake gets.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .conftest import Served

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def test_models_lists_deployments_with_their_metadata(served: Served) -> None:
    models = {m.id: m for m in served.client().models.list().data}

    assert set(models) == {"tiny", "tiny-embed"}
    tiny = models["tiny"].model_dump()
    assert tiny["owned_by"] == "forgeline"
    assert tiny["backend"] == "llamacpp"
    assert tiny["metadata"] == {
        "base": "tiny-llama",
        "version": "1",
        "quantization": "f16",
        "quality": None,
    }
    assert tiny["endpoints"] == ["/v1/chat/completions", "/v1/completions"]
    assert models["tiny-embed"].model_dump()["endpoints"] == ["/v1/embeddings"]
    assert served.client().models.retrieve("tiny").id == "tiny"


def test_chat_completion(served: Served) -> None:
    # Greedy, so the random tiny model's answer (and whether it stops early) is the same every run.
    answer = served.client().chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=5, temperature=0
    )

    assert answer.object == "chat.completion"
    assert answer.model == "tiny"
    assert len(answer.choices) == 1
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 5
    assert "timings" not in answer.model_dump()  # llama-server's extra stays inside


def test_chat_stream_with_usage_is_framed_as_openai_frames_it(served: Served) -> None:
    body = {
        "model": "tiny",
        "messages": CHAT,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {served.inference_key}"}
    with httpx.stream(
        "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, trust_env=False
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()

    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny" for c in chunks)
    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 4
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 4
    assert all("usage" not in c for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all("timings" not in c for c in chunks)


def test_chat_stream_through_the_sdk(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_stream_without_include_usage_has_no_usage_chunk(served: Served) -> None:
    chunks = list(
        served.client().chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=3, stream=True
        )
    )

    assert chunks
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_n_gives_n_choices(served: Served) -> None:
    client = served.client()
    chat = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=3, n=3, temperature=1.0
    )
    completion = client.completions.create(model="tiny", prompt="hello", max_tokens=3, n=2)

    assert sorted(c.index for c in chat.choices) == [0, 1, 2]
    assert sorted(c.index for c in completion.choices) == [0, 1]


def test_streamed_n_reports_usage_once_for_all_choices(served: Served) -> None:
    chunks = list(
        served.client().chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=3,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens == 6  # 3 tokens for each of 2 choices
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}


def test_stop_ends_the_answer_before_the_stop_sequence(served: Served) -> None:
    client = served.client()

    def greedy(stop: list[str] | None = None) -> Any:
        return client.completions.create(
            model="tiny", prompt="The", max_tokens=12, temperature=0.0, seed=1, stop=stop
        ).choices[0]

    full = greedy().text
    stop = full[len(full) // 2 :][:3]
    assert stop.strip(), f"no usable stop sequence in {full!r}"

    stopped = greedy([stop])

    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]


def test_chat_logprobs_pass_through_answered_and_streamed(served: Served) -> None:
    client = served.client()
    answer = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content
    assert all(len(token.top_logprobs) == 2 and token.logprob <= 0 for token in logprobs.content)

    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=3, temperature=0, logprobs=True, top_logprobs=2,
        stream=True,
    )  # fmt: skip
    streamed = [
        token
        for chunk in stream
        for choice in chunk.choices
        if choice.logprobs is not None
        for token in choice.logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in logprobs.content]


def test_completion_and_its_stream(served: Served) -> None:
    client = served.client()
    answer = client.completions.create(model="tiny", prompt="hello", max_tokens=4)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="hello",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert answer.object == "text_completion"
    assert answer.choices[0].text
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 4
    # llama-server puts usage on its last text chunk; the client gets OpenAI's separate one.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_embeddings(served: Served) -> None:
    client = served.client()
    result = client.embeddings.create(model="tiny-embed", input=["hello", "world"])
    encoded = client.embeddings.create(model="tiny-embed", input="hello", encoding_format="base64")

    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 256  # the tiny model's hidden size
    assert result.data[0].embedding != result.data[1].embedding
    assert result.model == "tiny-embed"
    assert result.usage.prompt_tokens > 0
    # Asked for explicitly, base64 comes back as text (the SDK types it as floats regardless):
    # little-endian float32s.
    encoded_vector: object = encoded.data[0].embedding
    assert isinstance(encoded_vector, str)
    vector = struct.unpack("<256f", base64.b64decode(encoded_vector))
    assert list(vector) == pytest.approx(result.data[0].embedding, abs=1e-6)


# --- the error each mistake gets -------------------------------------------------------------


def _error(exc: openai.APIStatusError) -> dict[str, object]:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


def test_unknown_model_is_404_model_not_found(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.client().chat.completions.create(model="nope", messages=CHAT)

    error = _error(caught.value)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_invalid_values_are_400_naming_the_param(
    served: Served, params: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": "tiny", "messages": CHAT, **params}
    response = httpx.post(
        f"{served.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {served.inference_key}"},
        trust_env=False,
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param.split("[")[0] in error["message"]


def test_missing_required_parameter_is_400(served: Served) -> None:
    response = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": "tiny"},
        headers={"Authorization": f"Bearer {served.inference_key}"},
        trust_env=False,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert response.json()["error"]["message"] == "Missing required parameter: 'messages'."


def test_a_parameter_the_backend_cannot_honour_is_400_never_dropped(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=2, extra_body={"bogus_knob": 1}
        )
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, n=5)
    with pytest.raises(openai.BadRequestError) as logprobs:
        client.completions.create(model="tiny", prompt="hi", max_tokens=2, logprobs=2)
    with pytest.raises(openai.BadRequestError) as wrong_endpoint:
        client.embeddings.create(model="tiny", input="hi")

    assert _error(unknown.value)["param"] == "bogus_knob"
    assert _error(too_many.value)["param"] == "n"
    assert "at most 4" in str(_error(too_many.value)["message"])
    assert _error(logprobs.value)["param"] == "logprobs"
    assert _error(wrong_endpoint.value)["param"] == "model"
    # A backend-specific sampling parameter the backend does honour is passed through.
    answer = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=2, extra_body={"top_k": 5}
    )
    assert answer.choices[0].message.content is not None


def test_stream_options_without_stream_is_400(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(
            model="tiny", messages=CHAT, stream_options={"include_usage": True}
        )
    assert _error(caught.value)["param"] == "stream_options"


def test_unknown_path_and_method_are_openai_shaped(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.inference_key}"}
    missing = httpx.get(f"{served.url}/v1/nothing", headers=headers, trust_env=False)
    wrong = httpx.get(f"{served.url}/v1/chat/completions", headers=headers, trust_env=False)
    not_json = httpx.post(
        f"{served.url}/v1/chat/completions", content=b"{not json", headers=headers,
        trust_env=False,
    )  # fmt: skip

    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert wrong.status_code == 405
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    assert not_json.status_code == 400
    assert "JSON" in not_json.json()["error"]["message"]
