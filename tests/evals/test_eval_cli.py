"""`forgeline eval MODEL --data FILE --grader ...`: a chat file scored through the gateway's Evals
API, the table and `--json` summary checked against the scoring library on the same texts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes.openai_text import WORDS
from rouge_score import rouge_scorer  # type: ignore[import-untyped]

from forgeline_cli.__main__ import main
from forgeline_cli.benchmark import BUILTIN_TASKS, choice_of, load_task, messages_for

from .conftest import EvalsStack

#: The vLLM fake answers WORDS in order: asked for 4 tokens, "Forgeline serves this answer".
ANSWER = "".join(WORDS[:4])


def _chat(question: str, answer: str) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages}) + "\n"


def _eval(stack: EvalsStack, *arguments: str, key: str | None = None) -> int:
    return main(
        [
            "eval",
            *arguments,
            "--gateway",
            stack.served.url,
            "--api-key",
            key or stack.served.admin_key,
        ]
    )


def test_a_chat_file_is_scored_per_grader(
    stack: EvalsStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    references = [ANSWER, "Copperfinch is the codename", "Forgeline serves"]
    data = tmp_path / "held-out.jsonl"
    data.write_text("".join(_chat(f"Question {i}?", ref) for i, ref in enumerate(references)))

    code = _eval(
        stack, "fake", "--data", str(data), "--grader", "rouge_l,exact", "--max-tokens", "4"
    )
    table = capsys.readouterr().out
    assert code == 0
    assert "fake on 3 rows" in table

    assert (
        _eval(
            stack,
            "fake",
            "--data",
            str(data),
            "--grader",
            "rouge_l,exact",
            "--max-tokens",
            "4",
            "--json",
        )
        == 0
    )
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score(ref, ANSWER)["rougeL"].fmeasure for ref in references]
    rouge, exact = summary["graders"]
    assert rouge["grader"] == "rouge_l"
    assert rouge["mean_score"] == pytest.approx(sum(expected) / 3)
    assert (rouge["passed"], rouge["failed"]) == (sum(e >= 0.5 for e in expected), 1)
    assert (exact["grader"], exact["passed"], exact["failed"]) == ("exact", 1, 2)
    assert f"{rouge['mean_score']:.4f}" in table  # the table shows the same figures


def test_bad_input_is_named(
    stack: EvalsStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(_chat("Q?", "A") + json.dumps({"messages": [{"role": "user", "content": "Q"}]}))
    assert _eval(stack, "fake", "--data", str(data)) == 1
    assert "bad.jsonl line 2" in capsys.readouterr().err

    data.write_text(_chat("Q?", "A"))
    assert _eval(stack, "no-such-model", "--data", str(data)) == 1
    assert "no-such-model" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        _eval(stack, "fake", "--data", str(data), "--grader", "rouge_9")
    assert "unknown grader rouge_9: choose from exact, fuzzy_match" in capsys.readouterr().err


def test_a_benchmark_is_scored_through_the_served_model(
    stack: EvalsStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its questions are chat completions: a key of the inference scope is what they need.
    inference = stack.served.inference_key
    code = _eval(
        stack, "tiny", "--benchmark", "tiny-facts", "--n-shot", "2", "--json", key=inference
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    summary: dict[str, Any] = json.loads(out)
    assert (summary["asked"], summary["split"], summary["n_shot"]) == (6, "test", 2)
    assert [s["name"] for s in summary["subjects"]] == ["Forgeline", "model serving"]

    # The same questions asked directly, greedily: the command counted the model's own choices.
    task = load_task(BUILTIN_TASKS["tiny-facts"])
    client = stack.served.client(inference)
    correct = 0
    for subject in task.subjects:
        for question in subject.questions:
            reply = client.chat.completions.create(
                model="tiny",
                messages=messages_for(subject, question, n_shot=2),  # type: ignore[arg-type]
                temperature=0,
                seed=0,
                max_tokens=4,
            )
            correct += choice_of(reply.choices[0].message.content or "") == question.answer
    assert summary["correct"] == correct
    assert summary["accuracy"] == pytest.approx(correct / 6)

    assert _eval(stack, "tiny", "--benchmark", "tiny-facts", key=inference) == 0
    table = capsys.readouterr().out
    assert f"({correct}/6)" in table
    assert "model serving" in table

    # A model the gateway does not serve is named in the failure.
    assert _eval(stack, "nope", "--benchmark", "tiny-facts", key=inference) == 1
    assert "'nope'" in capsys.readouterr().err
