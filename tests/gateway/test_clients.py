"""Third-party OpenAI-compatible clients against the gateway over real llama-server processes:
LangChain's ``ChatOpenAI`` and ``OpenAIEmbeddings``, and LlamaIndex's ``OpenAILike``, as
applications configure them for a self-hosted endpoint (``base_url`` and ``api_key``, nothing
else of Forgeline's). LlamaIndex pins openai<3, so it runs in an environment of its own
(``.venv-clients``, made by ``make clients``), as it would in an application."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from .conftest import Served


def _chat(served: Served, **options: object) -> ChatOpenAI:
    return ChatOpenAI(
        model="tiny",
        base_url=f"{served.url}/v1",
        api_key=served.inference_key,
        temperature=0,
        max_retries=0,
        **options,
    )


def test_langchain_chat_answers_with_usage(served: Served) -> None:
    answer = _chat(served, max_tokens=5).invoke([SystemMessage("Be brief."), HumanMessage("hello")])

    assert isinstance(answer.content, str)
    assert answer.content
    assert answer.response_metadata["finish_reason"] == "length"
    assert answer.response_metadata["model_name"] == "tiny"
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == 5


def test_langchain_streams_the_same_answer_in_pieces(served: Served) -> None:
    model = _chat(served, max_tokens=6, stream_usage=True)
    whole = model.invoke("hello")

    chunks = list(model.stream("hello"))

    assert len(chunks) > 1
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert "".join(str(chunk.content) for chunk in chunks) == whole.content
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage
    assert usage[-1]["output_tokens"] == 6


def test_langchain_embeddings(served: Served) -> None:
    embeddings = OpenAIEmbeddings(
        model="tiny-embed",
        openai_api_base=f"{served.url}/v1",
        openai_api_key=served.inference_key,
        # LangChain counts tokens with tiktoken first, whose encodings come from the internet;
        # an OpenAI-compatible server counts its own.
        check_embedding_ctx_length=False,
        max_retries=0,
    )

    documents = embeddings.embed_documents(["a red apple", "a green pear"])
    query = embeddings.embed_query("a red apple")

    assert len(documents) == 2
    assert len(documents[0]) == len(query) > 0
    assert all(math.isfinite(x) for x in query)
    assert documents[0] == pytest.approx(query, abs=1e-5)  # the same text, the same vector
    assert documents[1] != pytest.approx(query, abs=1e-5)


def test_langchain_sees_an_unknown_model_as_openai_reports_it(served: Served) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as missing:
        ChatOpenAI(
            model="no-such-model",
            base_url=f"{served.url}/v1",
            api_key=served.inference_key,
            max_retries=0,
        ).invoke("hello")

    assert "no-such-model" in str(missing.value)


ROOT = Path(__file__).resolve().parents[2]
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
LLAMAINDEX = Path(__file__).with_name("clients") / "llamaindex_chat.py"


def test_llamaindex_chat_stream_and_complete(served: Served) -> None:
    assert CLIENTS_PYTHON.exists(), "the clients' environment is missing: run `make clients`"
    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [str(CLIENTS_PYTHON), str(LLAMAINDEX), f"{served.url}/v1", served.inference_key, "tiny"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)

    expected = (
        served.client()
        .chat.completions.create(
            model="tiny",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello"},
            ],
            max_tokens=6,
            temperature=0,
        )
        .choices[0]
        .message.content
    )
    assert seen["chat"] == expected  # greedy: the SDK and LlamaIndex get the same answer
    assert len(seen["stream"]) > 1
    assert "".join(seen["stream"]) == expected
    assert seen["complete"]
