"""Multiple-choice benchmarks in LLaMA-Factory's task layout (MMLU, C-Eval, CMMLU), asked of a
served model.

The layout is the one ``llamafactory-cli eval --task_dir DIR --task NAME_SPLIT`` reads, unzipped:

    TASK/mapping.json                      {"subject": {"name": "...", "category": "STEM"}, ...}
    TASK/data/dev/<subject>_dev.csv        the few-shot examples
    TASK/data/<split>/<subject>_<split>.csv  the questions scored (split: test, val)

Each CSV row is a question, its choices A to D and the answer letter: MMLU's files have no
header (``question,A,B,C,D,answer``); C-Eval's and CMMLU's have one (``id,question,A,B,C,D,
answer,explanation``; ``,Question,A,B,C,D,Answer``), read by its column names. Prompts are
LLaMA-Factory's (``eval/template.py``, ``en`` and ``zh``): the subject's instruction, then
`n_shot` dev examples as user/assistant turns, then the question; the model answers greedily and
its first letter A to D is its choice. LLaMA-Factory takes the choice from the logits of the
four letters; through an OpenAI-compatible API the answer text is what there is, so a reply
that does not start with a letter counts as no choice (wrong).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from forgeline_kit.tinymodel.datasets import BENCHMARK_DIR

__all__ = [
    "BUILTIN_TASKS",
    "BenchmarkError",
    "Question",
    "Score",
    "Task",
    "load_task",
    "messages_for",
    "score",
]

CHOICES: Final = ("A", "B", "C", "D")
#: LLaMA-Factory's eval templates (instruction, choice line, answer cue), per language.
_TEMPLATES: Final = {
    "en": (
        "The following are multiple choice questions (with answers) about {subject}.\n\n",
        "\n{choice}. {content}",
        "\nAnswer:",
    ),
    "zh": (
        "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",  # noqa: RUF001
        "\n{choice}. {content}",
        "\n答案：",  # noqa: RUF001 (LLaMA-Factory's own punctuation)
    ),
}
#: Tasks shipped with Forgeline, by name: a small one about Forgeline itself, for the tiny model.
BUILTIN_TASKS: Final = {"tiny-facts": BENCHMARK_DIR}
_LETTER: Final = re.compile(r"\s*([ABCD])(?![A-Za-z])")

Language = Literal["en", "zh"]
Messages = list[dict[str, str]]


class BenchmarkError(ValueError):
    """A task folder not in LLaMA-Factory's layout; the message names the file and what to fix."""


class _Subject(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    category: str = "Other"


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class Subject:
    key: str
    name: str
    category: str
    shots: list[Question]
    questions: list[Question]


@dataclass(frozen=True)
class Task:
    path: Path
    split: str
    subjects: list[Subject]

    @property
    def size(self) -> int:
        return sum(len(s.questions) for s in self.subjects)


@dataclass
class Score:
    """Correct answers out of asked, per subject and per category."""

    subjects: dict[str, tuple[int, int]] = field(default_factory=dict)
    categories: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def overall(self) -> tuple[int, int]:
        pairs = self.subjects.values()
        return sum(c for c, _ in pairs), sum(n for _, n in pairs)


def _rows(path: Path) -> list[Question]:
    try:
        with path.open(encoding="utf-8", newline="") as source:
            rows = [row for row in csv.reader(source) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BenchmarkError(f"cannot read {path}: {error}") from None
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    if "question" in header:  # C-Eval and CMMLU name their columns
        try:
            at = {name: header.index(name) for name in ("question", "a", "b", "c", "d", "answer")}
        except ValueError:
            raise BenchmarkError(
                f"{path}: its header {rows[0]} lacks one of question, A, B, C, D, answer"
            ) from None
        rows, columns = rows[1:], [at[n] for n in ("question", "a", "b", "c", "d", "answer")]
    else:  # MMLU: question, A, B, C, D, answer
        columns = [0, 1, 2, 3, 4, 5]
    questions = []
    for number, row in enumerate(rows, 1):
        try:
            question, a, b, c, d, answer = (row[i].strip() for i in columns)
        except IndexError:
            raise BenchmarkError(
                f"{path} row {number}: expected a question, four choices and the answer "
                f"letter, got {len(row)} cells"
            ) from None
        if answer not in CHOICES:
            raise BenchmarkError(
                f"{path} row {number}: the answer must be A, B, C or D (got {answer!r})"
            )
        questions.append(Question(question, (a, b, c, d), answer))
    return questions


def load_task(directory: Path, split: str = "test") -> Task:
    """The task in `directory` (LLaMA-Factory's layout, see the module's doc), `split` scored.

    Raises:
        BenchmarkError: a missing or malformed mapping.json or CSV file, named.
    """
    split = "val" if split == "validation" else split
    mapping_path = directory / "mapping.json"
    try:
        raw = json.loads(mapping_path.read_text(encoding="utf-8"))
        mapping = {key: _Subject.model_validate(value) for key, value in raw.items()}
    except FileNotFoundError:
        raise BenchmarkError(
            f"{directory} is not a task folder in LLaMA-Factory's layout: no mapping.json "
            "(unzip the task's archive, e.g. mmlu.zip, next to its mapping.json)"
        ) from None
    except (OSError, ValueError, AttributeError, ValidationError) as error:
        raise BenchmarkError(
            f"{mapping_path} cannot be read as a subject mapping: {error}"
        ) from None
    subjects = []
    for key, subject in mapping.items():
        scored = directory / "data" / split / f"{key}_{split}.csv"
        if not scored.is_file():
            raise BenchmarkError(
                f"no {split} questions for the subject '{key}': {scored} is missing"
            )
        dev = directory / "data" / "dev" / f"{key}_dev.csv"
        shots = _rows(dev) if dev.is_file() else []
        subjects.append(Subject(key, subject.name, subject.category, shots, _rows(scored)))
    return Task(directory, split, subjects)


def _prompt(question: Question, language: Language) -> str:
    _, choice, answer = _TEMPLATES[language]
    lines = "".join(
        choice.format(choice=c, content=t) for c, t in zip(CHOICES, question.choices, strict=True)
    )
    return question.question + lines + answer


def messages_for(
    subject: Subject, question: Question, *, n_shot: int, language: Language = "en"
) -> Messages:
    """LLaMA-Factory's few-shot chat for `question`: `n_shot` dev examples as user/assistant turns,
    the subject's instruction before the first."""
    messages: Messages = []
    for shot in subject.shots[:n_shot]:
        messages.append({"role": "user", "content": _prompt(shot, language)})
        messages.append({"role": "assistant", "content": shot.answer})
    messages.append({"role": "user", "content": _prompt(question, language)})
    instruction = _TEMPLATES[language][0].format(subject=subject.name)
    messages[0] = {"role": "user", "content": instruction + messages[0]["content"]}
    return messages


def choice_of(answer: str) -> str | None:
    """The letter a reply chooses: its first A to D standing alone, else None."""
    found = _LETTER.match(answer)
    return found.group(1) if found else None


def score(
    task: Task,
    ask: Callable[[Messages], str],
    *,
    n_shot: int,
    language: Language = "en",
    map_: Callable[
        [Callable[[tuple[Subject, Question]], bool], Iterable[tuple[Subject, Question]]],
        Iterable[bool],
    ] = map,
    progress: Callable[[int], None] = lambda _: None,
) -> Score:
    """Ask every question of `task` through `ask` (a chat answer for messages) and count the
    correct choices per subject and category. `map_` runs the asks (a thread pool's map)."""
    items = [(s, q) for s in task.subjects for q in s.questions]

    def correct(item: tuple[Subject, Question]) -> bool:
        subject, question = item
        return (
            choice_of(ask(messages_for(subject, question, n_shot=n_shot, language=language)))
            == question.answer
        )

    result = Score()
    answers = zip(items, map_(correct, items), strict=True)
    for done, ((subject, _), right) in enumerate(answers, 1):
        progress(done)
        for table, key in ((result.subjects, subject.key), (result.categories, subject.category)):
            good, asked = table.get(key, (0, 0))
            table[key] = (good + right, asked + 1)
    return result
