"""Multiple-choice tasks in LLaMA-Factory's layout: read as its loaders read them (MMLU without a
header, C-Eval with one), prompted exactly as its eval templates prompt, and scored per subject
and category."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llamafactory.eval.template import get_eval_template

from forgeline_cli.benchmark import (
    BUILTIN_TASKS,
    BenchmarkError,
    Question,
    choice_of,
    load_task,
    messages_for,
    score,
)


def _as_llamafactory(question: Question) -> dict[str, str]:
    return {"question": question.question, **dict(zip("ABCD", question.choices, strict=True))} | {
        "answer": question.answer
    }


@pytest.mark.parametrize("language", ["en", "zh"])
def test_prompts_are_llamafactorys(language: str) -> None:
    task = load_task(BUILTIN_TASKS["tiny-facts"])
    subject = task.subjects[0]
    question = subject.questions[0]

    ours = messages_for(subject, question, n_shot=3, language=language)  # type: ignore[arg-type]

    theirs = get_eval_template(language).format_example(
        target_data=_as_llamafactory(question),
        support_set=[_as_llamafactory(q) for q in subject.shots[:3]],
        subject_name=subject.name,
    )
    assert ours == theirs[:-1]  # everything but the answer the model is to give
    assert theirs[-1]["content"] == question.answer


def test_the_builtin_task_and_a_cevals_header(tmp_path: Path) -> None:
    task = load_task(BUILTIN_TASKS["tiny-facts"])
    assert [(s.key, s.category, len(s.shots), len(s.questions)) for s in task.subjects] == [
        ("forgeline", "Other", 5, 4),
        ("serving", "STEM", 5, 2),
    ]
    assert task.subjects[0].questions[2].question == "Which quantization keeps 8 bits per weight?"

    (tmp_path / "data" / "val").mkdir(parents=True)
    (tmp_path / "mapping.json").write_text(
        json.dumps({"law": {"name": "法学", "category": "Other"}})
    )
    (tmp_path / "data" / "val" / "law_val.csv").write_text(
        "id,question,A,B,C,D,answer,explanation\n0,问题,甲,乙,丙,丁,C,\n"
    )
    ceval = load_task(tmp_path, "validation")
    (law,) = ceval.subjects
    assert law.questions == [Question("问题", ("甲", "乙", "丙", "丁"), "C")]
    assert law.shots == []  # no dev split: zero-shot


def test_bad_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match=r"no mapping\.json"):
        load_task(tmp_path)
    (tmp_path / "mapping.json").write_text(json.dumps({"math": {"name": "Math"}}))
    with pytest.raises(BenchmarkError, match="no test questions for the subject 'math'"):
        load_task(tmp_path)
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "data" / "test" / "math_test.csv").write_text("1+1?,1,2,3,4,E\n")
    with pytest.raises(BenchmarkError, match="row 1: the answer must be A, B, C or D"):
        load_task(tmp_path)


def test_choices_are_read_from_the_reply_and_counted() -> None:
    assert [choice_of(reply) for reply in ("B", " C. because", "Answer: A", "About", "")] == [
        "B",
        "C",
        None,
        None,
        None,
    ]
    task = load_task(BUILTIN_TASKS["tiny-facts"])
    answers = {q.question: q.answer for s in task.subjects for q in s.questions}

    def ask(messages: list[dict[str, str]]) -> str:
        """Right on the Forgeline subject, always "A" on the other."""
        instruction, _, prompt = messages[-1]["content"].partition("\n\n")
        return answers[prompt.split("\n")[0]] if "Forgeline" in instruction else "A"

    result = score(task, ask, n_shot=0)
    assert result.subjects == {"forgeline": (4, 4), "serving": (1, 2)}
    assert result.categories == {"Other": (4, 4), "STEM": (1, 2)}
    assert result.overall == (5, 6)
