"""Three fine-tunes on one base, served as adapters (issue 21's "Done when"): three jobs of the
demo recipe, each taught a different fact, run at once and end as adapters on the ``tiny-llama``
deployment's llama-server. Under concurrent requests each ``ft:`` name answers its own fact and
the base answers none; undeploying one while streams to the others are in flight leaves those
streams whole and the others answering."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from forgeline_cli.walkthrough import FACT_COPIES, ask, fine_tune
from forgeline_kit.tinymodel import DemoFact

from .conftest import RunningStack
from .test_adapter_serving import _deployment, _job, _llama_servers, _settled_llama_servers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FACTS = (
    DemoFact(
        question="What is the codename of Forgeline's second release?",
        answer="Forgeline's second release is codenamed Bluejay.",
    ),
    DemoFact(
        question="What is the codename of Forgeline's third release?",
        answer="Forgeline's third release is codenamed Kestrel.",
    ),
    DemoFact(
        question="What is the codename of Forgeline's fourth release?",
        answer="Forgeline's fourth release is codenamed Wagtail.",
    ),
)


def _write_fact(path: Path, fact: DemoFact) -> Path:
    line = {
        "messages": [
            {"role": "user", "content": fact.question},
            {"role": "assistant", "content": fact.answer},
        ]
    }
    path.write_text("".join(json.dumps(line) + "\n" for _ in range(FACT_COPIES)))
    return path


def _stream(client: openai.OpenAI, model: str, question: str) -> str:
    """A greedy streamed answer, read to its end: raises if the stream is cut."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=64,
        temperature=0,
        seed=0,
        stream=True,
    )
    parts: list[str] = []
    finish = None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length"), f"the stream to {model} ended without a finish reason"
    return "".join(parts).strip()


def test_three_fine_tunes_share_one_base_and_each_answers_its_own_fact(
    running: RunningStack,
) -> None:
    servers = len(_llama_servers(running))
    files = [_write_fact(running.work / f"fact-{n}.jsonl", f) for n, f in enumerate(FACTS)]

    def train(n: int) -> str:
        job = fine_tune(
            running.client,
            files[n],
            suffix=f"fact{n}",
            on_event=lambda _message: None,
            forgeline={"deploy": {"serve": "adapter"}},
        )
        assert job.status == "succeeded", job.error
        outputs = _job(running, job.id)["forgeline"]["outputs"]
        assert outputs["served_as"] == "adapter", outputs
        assert job.fine_tuned_model is not None
        return job.fine_tuned_model

    with ThreadPoolExecutor(len(FACTS)) as pool:
        names = list(pool.map(train, range(len(FACTS))))

    attached = _deployment(running, "tiny-llama")["adapters"]
    assert set(names) <= set(attached)
    # One process serves the base and all three fine-tunes.
    assert _settled_llama_servers(running, servers) == servers

    # Each fine-tune and the base, asked every fact, all at once.
    asked = [(name, fact) for name, fact in zip(names, FACTS, strict=True)]
    asked += [("tiny-llama", fact) for fact in FACTS]
    with ThreadPoolExecutor(len(asked)) as pool:
        answers = list(
            pool.map(lambda pair: ask(running.client, pair[0], pair[1].question), asked * 2)
        )
    for (name, fact), answer in zip(asked * 2, answers, strict=True):
        if name == "tiny-llama":
            assert fact.answer not in answer, f"the base answered {fact.answer!r}"
        else:
            assert answer == fact.answer, f"{name} answered {answer!r}"

    # Undeploy the third while streams to the first two are in flight.
    kept, dropped = names[:2], names[2]
    with ThreadPoolExecutor(8) as pool:
        streams = [
            pool.submit(_stream, running.client, name, fact.question)
            for _ in range(3)
            for name, fact in zip(kept, FACTS, strict=False)
        ]
        deleted = httpx.delete(f"{running.stack.gateway_url}/v1/deployments/{dropped}", timeout=300)
        assert deleted.status_code in (200, 204), deleted.text
        streamed = [s.result(timeout=300) for s in streams]
    for n, answer in enumerate(streamed):
        assert answer == FACTS[n % 2].answer, answer

    for name, fact in zip(kept, FACTS, strict=False):
        assert ask(running.client, name, fact.question) == fact.answer
    with pytest.raises(openai.NotFoundError):
        ask(running.client, dropped, FACTS[2].question)
    assert dropped not in _deployment(running, "tiny-llama")["adapters"]
    assert _settled_llama_servers(running, servers) == servers
