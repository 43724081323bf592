"""The adapter check's parts: the prompts it takes from a job's file, its tolerance, and how it
counts answers (`fine_tuning/agreement.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forgeline_gateway.fine_tuning.agreement import (
    PROMPTS,
    Agreement,
    Messages,
    compare,
    examples_of,
    prompts_of,
    required,
)
from forgeline_kit.datasets import DatasetFormat
from forgeline_kit.errors import InvalidArgument, Unavailable
from forgeline_kit.tinymodel import DatasetColumns, DatasetTags


def _jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_tolerance_is_one_differing_prompt_in_eight() -> None:
    assert [required(n) for n in (1, 3, 7, 8, 9, 16)] == [1, 3, 7, 7, 8, 14]
    assert Agreement(agreed=7, total=8).holds
    assert not Agreement(agreed=6, total=8).holds
    assert not Agreement(agreed=2, total=3).holds
    assert not Agreement(agreed=0, total=0).holds  # nothing compared is no evidence


def test_openai_chat_prompts_end_before_the_last_answer_each_once(tmp_path: Path) -> None:
    def chat(question: str) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": "An answer."},
            ]
        }

    records = [chat("q1"), chat("q1"), chat("q2")]
    records.append({"messages": [{"role": "user", "content": "t"}], "tools": [{"type": "x"}]})
    records += [chat(f"q{i}") for i in range(3, 20)]
    path = _jsonl(tmp_path / "chat.jsonl", records)

    prompts = prompts_of(path, DatasetFormat.OPENAI_CHAT)

    assert len(prompts) == PROMPTS
    assert prompts[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
    ]
    assert [p[-1]["content"] for p in prompts[:3]] == ["q1", "q2", "q3"]


def test_prompts_of_the_other_layouts(tmp_path: Path) -> None:
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "1 and 2", "output": "3"}]))
    sharegpt = _jsonl(
        tmp_path / "sharegpt.jsonl",
        [
            {
                "conversations": [
                    {"from": "human", "value": "hi"},
                    {"from": "gpt", "value": "hello"},
                ],
                "system": "Be kind.",
            }
        ],
    )
    preference = _jsonl(
        tmp_path / "preference.jsonl",
        [
            {
                "input": {"messages": [{"role": "user", "content": "pick"}]},
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            }
        ],
    )
    text = _jsonl(tmp_path / "text.jsonl", [{"text": "Once upon a time"}])

    assert prompts_of(alpaca, DatasetFormat.ALPACA) == [
        [{"role": "user", "content": "Add\n1 and 2"}]
    ]
    assert prompts_of(sharegpt, DatasetFormat.SHAREGPT) == [
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]
    ]
    openai_tags = DatasetTags(
        role_tag="role", content_tag="content", user_tag="user", assistant_tag="assistant"
    )
    renamed = _jsonl(
        tmp_path / "renamed.jsonl",
        [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}],
    )
    assert prompts_of(
        renamed,
        DatasetFormat.SHAREGPT,
        columns=DatasetColumns(messages="messages"),
        tags=openai_tags,
    ) == [[{"role": "user", "content": "x"}]]
    assert prompts_of(preference, DatasetFormat.OPENAI_PREFERENCE) == [
        [{"role": "user", "content": "pick"}]
    ]
    assert prompts_of(text, DatasetFormat.PRETRAIN_TEXT) == []

    # What a job's evaluation scores against: each prompt with the file's own answer.
    assert examples_of(alpaca, DatasetFormat.ALPACA) == [
        ([{"role": "user", "content": "Add\n1 and 2"}], "3")
    ]
    assert examples_of(sharegpt, DatasetFormat.SHAREGPT) == [
        ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}], "hello")
    ]
    columns = DatasetColumns(messages="messages")
    assert examples_of(renamed, DatasetFormat.SHAREGPT, columns=columns, tags=openai_tags) == [
        ([{"role": "user", "content": "x"}], "y")
    ]
    assert examples_of(preference, DatasetFormat.OPENAI_PREFERENCE) == []
    assert examples_of(text, DatasetFormat.PRETRAIN_TEXT) == []


async def test_answers_are_compared_as_text_and_refused_prompts_left_out() -> None:
    answers = {
        ("adapter", "a"): "same",
        ("merged", "a"): "same",
        ("adapter", "b"): "one thing",
        ("merged", "b"): "another",
        ("adapter", "c"): "same again",
        ("merged", "c"): "same again",
    }

    async def answer(model: str, messages: Messages) -> str:
        question = messages[-1]["content"]
        if question == "too long":
            raise InvalidArgument("the prompt is longer than the context")
        return answers[(model, question)]

    prompts = [[{"role": "user", "content": q}] for q in ("a", "too long", "b", "c")]
    agreement = await compare(answer, "adapter", "merged", prompts)

    assert (agreement.agreed, agreement.total, agreement.text) == (2, 3, "2/3")
    assert agreement.first_difference == (3, "one thing", "another")
    assert not agreement.holds
    assert 'prompt 3: the adapter answers "one thing", the merged model "another"' in (
        agreement.describe()
    )


async def test_a_backend_out_of_reach_stops_the_comparison() -> None:
    async def answer(model: str, messages: Messages) -> str:
        raise Unavailable("no backend")

    with pytest.raises(Unavailable):
        await compare(answer, "adapter", "merged", [[{"role": "user", "content": "a"}]])
