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

from .conftest import EvalsStack

#: The vLLM fake answers WORDS in order: asked for 4 tokens, "Forgeline serves this answer".
ANSWER = "".join(WORDS[:4])


def _chat(question: str, answer: str) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages}) + "\n"


def _eval(stack: EvalsStack, *arguments: str) -> int:
    return main(
        [
            "eval",
            *arguments,
            "--gateway",
            stack.served.url,
            "--api-key",
            stack.served.admin_key,
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
