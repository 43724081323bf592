"""``forgeline eval MODEL --data FILE.jsonl --grader rouge_l,bleu``: how well a deployed model
answers a held-out chat file, scored per grader; ``forgeline eval MODEL --benchmark DIR``: its
accuracy on a multiple-choice task in LLaMA-Factory's layout (`benchmark.py`), per subject.

The file is chat fine-tuning data, as a job's ``validation_file`` is: each record's last message
is the assistant's answer, the reference; the messages before it are the prompt. The command is a
client of the gateway's Evals API (``/v1/evals``, OpenAI's): it creates an eval whose testing
criteria are the graders, runs it on the model with the rows inline (greedy, so two runs agree),
shows a progress bar while the model answers, then a table per grader: the mean score, and how many
rows passed the threshold. The eval and its run stay on the gateway (``client.evals.*`` reads them).

The gateway is reached as by ``forgeline deploy`` (``--gateway URL``, ``--api-key``): ``--data``
needs a key of the admin scope (the Evals API), ``--benchmark`` one of the inference scope (its
questions are chat completions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Literal

from openai import APIConnectionError, APIStatusError, OpenAI
from pydantic import BaseModel, ConfigDict, Field

from forgeline_cli.benchmark import BUILTIN_TASKS, BenchmarkError, load_task, score
from forgeline_cli.console import EXIT_INTERRUPTED, fail, print_json
from forgeline_cli.gateway_admin import (
    CommandError,
    GatewayAdmin,
    api_key,
    gateway_options,
    run_admin,
)
from forgeline_cli.services import GATEWAY
from forgeline_kit.graders import GRADER_NAMES

__all__ = ["GRADERS", "register"]

#: The graders ``--grader`` takes: the gateway's ``text_similarity`` metrics (``cosine`` needs
#: embeddings it does not have), and ``exact`` (``string_check`` equality).
GRADERS: Final = GRADER_NAMES
_TERMINAL: Final = frozenset({"completed", "failed", "canceled"})
POLL_SECONDS: Final = 0.5
_PAGE: Final = 100
_BAR_WIDTH: Final = 30


class EvalFileError(ValueError):
    """A data file that is not chat records ending in an assistant answer; names the line."""


# --- the gateway's objects, as far as the command reads them


class _Counts(BaseModel):
    model_config = ConfigDict(extra="ignore")

    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class _RunError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str | None = None
    message: str = ""


class _Run(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    eval_id: str
    status: str
    result_counts: _Counts
    error: _RunError | None = None


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    score: float
    passed: bool
    error: str | None = None


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    status: Literal["pass", "fail", "error"]
    results: list[_Result]


class _ItemPage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Item]
    has_more: bool
    last_id: str | None = None


class GraderSummary(BaseModel):
    """One grader over the whole run (what the table and ``--json`` show)."""

    grader: str
    mean_score: float | None = Field(description="Over the rows it could score; null if none.")
    passed: int
    failed: int
    errored: int


class EvalSummary(BaseModel):
    model: str
    eval_id: str
    run_id: str
    rows: int
    status: str
    graders: list[GraderSummary]


# --- the file, the eval and the run


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The eval rows of a chat JSONL file: ``{"item": {"messages": PROMPT, "reference": ANSWER}}``.

    Raises:
        EvalFileError: naming the line and what is wrong with it.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise EvalFileError(f"cannot read {path}: {error}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvalFileError(f"{where}: not valid JSON ({error.msg})") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or len(messages) < 2:
            raise EvalFileError(
                f'{where}: expected a chat record {{"messages": [..., {{"role": "assistant", '
                '"content": ANSWER}]}, with at least one message before the answer'
            )
        answer = messages[-1]
        if (
            not isinstance(answer, dict)
            or answer.get("role") != "assistant"
            or not isinstance(answer.get("content"), str)
        ):
            raise EvalFileError(
                f"{where}: the last message must be the assistant's answer as text (the "
                "reference the model's answer is scored against)"
            )
        rows.append({"item": {"messages": messages[:-1], "reference": answer["content"]}})
    if not rows:
        raise EvalFileError(f"{path} holds no records")
    return rows


def _criterion(grader: str, threshold: float) -> dict[str, Any]:
    common = {"name": grader, "input": "{{sample.output_text}}", "reference": "{{item.reference}}"}
    if grader == "exact":
        return common | {"type": "string_check", "operation": "eq"}
    return common | {
        "type": "text_similarity",
        "evaluation_metric": grader,
        "pass_threshold": threshold,
    }


def _graders(text: str) -> list[str]:
    graders = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in graders if name not in GRADERS]
    if unknown or not graders:
        named = ", ".join(unknown) or "(none given)"
        raise argparse.ArgumentTypeError(
            f"unknown grader {named}: choose from {', '.join(GRADERS)}"
        )
    return list(dict.fromkeys(graders))


def _create_run(admin: GatewayAdmin, args: argparse.Namespace, rows: list[dict[str, Any]]) -> _Run:
    evaluation = admin.call(
        "POST",
        "/v1/evals",
        json={
            "name": f"forgeline eval {args.data.name}",
            "data_source_config": {
                "type": "custom",
                "item_schema": {
                    "type": "object",
                    "properties": {
                        "messages": {"type": "array"},
                        "reference": {"type": "string"},
                    },
                    "required": ["messages", "reference"],
                },
            },
            "testing_criteria": [_criterion(g, args.threshold) for g in args.grader],
        },
    ).json()
    run = admin.call(
        "POST",
        f"/v1/evals/{evaluation['id']}/runs",
        json={
            "name": f"{args.model} on {args.data.name}",
            "data_source": {
                "type": "completions",
                "model": args.model,
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                "source": {"type": "file_content", "content": rows},
                "sampling_params": {
                    "temperature": 0,
                    "seed": 0,
                    "max_completion_tokens": args.max_tokens or 128,
                },
            },
        },
    )
    return _Run.model_validate_json(run.content)


def _bar(done: int, total: int) -> str:
    filled = _BAR_WIDTH * done // max(total, 1)
    return f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {done}/{total} rows"


def _wait(admin: GatewayAdmin, run: _Run, rows: int, progress: bool) -> _Run:
    path = f"/v1/evals/{run.eval_id}/runs/{run.id}"
    while run.status not in _TERMINAL:
        if progress:
            print(_bar(run.result_counts.total, rows), end="", file=sys.stderr, flush=True)
        time.sleep(POLL_SECONDS)
        run = _Run.model_validate_json(admin.call("GET", path).content)
    if progress:
        print(_bar(run.result_counts.total, rows), file=sys.stderr, flush=True)
    return run


def _items(admin: GatewayAdmin, run: _Run) -> list[_Item]:
    items: list[_Item] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": _PAGE} | ({"after": after} if after else {})
        page = _ItemPage.model_validate_json(
            admin.call(
                "GET", f"/v1/evals/{run.eval_id}/runs/{run.id}/output_items", params=params
            ).content
        )
        items += page.data
        if not page.has_more or page.last_id is None:
            return items
        after = page.last_id


def summarize(graders: list[str], items: list[_Item]) -> list[GraderSummary]:
    """Per grader: the mean score over the rows it scored, and pass/fail/error counts."""
    summaries = []
    for grader in graders:
        results = [r for item in items for r in item.results if r.name == grader]
        scored = [r for r in results if r.error is None]
        summaries.append(
            GraderSummary(
                grader=grader,
                mean_score=statistics.fmean(r.score for r in scored) if scored else None,
                passed=sum(r.passed for r in scored),
                failed=sum(not r.passed for r in scored),
                errored=len(items) - len(scored),
            )
        )
    return summaries


def _table(summary: EvalSummary) -> str:
    lines = [
        f"{summary.model} on {summary.rows} rows (eval {summary.eval_id}, run {summary.run_id})",
        f"{'grader':<12} {'mean score':>10} {'passed':>8} {'failed':>8} {'errors':>7}",
    ]
    for g in summary.graders:
        mean = "-" if g.mean_score is None else f"{g.mean_score:.4f}"
        lines.append(f"{g.grader:<12} {mean:>10} {g.passed:>8} {g.failed:>8} {g.errored:>7}")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    try:
        rows = read_rows(args.data)
    except EvalFileError as error:
        return fail(str(error))

    def action(admin: GatewayAdmin) -> int:
        run = _create_run(admin, args, rows)
        try:
            run = _wait(admin, run, len(rows), progress=not args.json and sys.stderr.isatty())
        except KeyboardInterrupt:
            admin.call("POST", f"/v1/evals/{run.eval_id}/runs/{run.id}")  # cancel
            print(f"\ncancelled run {run.id}", file=sys.stderr)
            return EXIT_INTERRUPTED
        summary = EvalSummary(
            model=args.model,
            eval_id=run.eval_id,
            run_id=run.id,
            rows=len(rows),
            status=run.status,
            graders=summarize(args.grader, _items(admin, run)),
        )
        if args.json:
            print_json(summary)
        else:
            print(_table(summary))
        if run.status != "completed":
            reason = run.error.message if run.error else run.status
            return fail(f"the eval run ended {run.status}: {reason} (rows scored so far kept)")
        return 0

    return run_admin(args, action)


class BenchmarkLine(BaseModel):
    """Accuracy of one subject or category (what the table and ``--json`` show)."""

    name: str
    correct: int
    asked: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.asked if self.asked else 0.0


class BenchmarkSummary(BaseModel):
    model: str
    task: str
    split: str
    n_shot: int
    accuracy: float
    correct: int
    asked: int
    subjects: list[BenchmarkLine]
    categories: list[BenchmarkLine]


def _benchmark_table(summary: BenchmarkSummary) -> str:
    lines = [
        f"{summary.model} on {summary.task} ({summary.split}, {summary.n_shot}-shot): "
        f"{100 * summary.accuracy:.2f}% ({summary.correct}/{summary.asked})",
        f"{'subject':<28} {'accuracy':>9} {'correct':>8}",
    ]
    lines += [
        f"{line.name:<28} {100 * line.accuracy:>8.2f}% {line.correct:>4}/{line.asked}"
        for line in summary.subjects
    ]
    lines.append(f"{'category':<28} {'accuracy':>9} {'correct':>8}")
    lines += [
        f"{line.name:<28} {100 * line.accuracy:>8.2f}% {line.correct:>4}/{line.asked}"
        for line in summary.categories
    ]
    return "\n".join(lines)


def _task_dir(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        return path
    if text in BUILTIN_TASKS:
        return BUILTIN_TASKS[text]
    raise argparse.ArgumentTypeError(
        f"{text} is neither a task folder nor a built-in task ({', '.join(BUILTIN_TASKS)})"
    )


def _benchmark(args: argparse.Namespace) -> int:
    try:
        task = load_task(args.benchmark, args.split)
    except BenchmarkError as error:
        return fail(str(error))
    # Questions are chat completions: the OpenAI API, with a key of the inference scope.
    client = OpenAI(
        base_url=f"{args.gateway.rstrip('/')}/v1",
        api_key=api_key(args) or "none",
        max_retries=2,
        timeout=300,
    )

    def ask(messages: list[dict[str, str]]) -> str:
        try:
            answer = client.chat.completions.create(
                model=args.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=0,
                seed=0,
                max_tokens=args.max_tokens or 4,
            )
        except APIStatusError as error:
            raise CommandError(
                f"the gateway refused a question ({error.status_code}): {error.message}"
            ) from None
        except APIConnectionError as error:
            raise CommandError(GATEWAY.unreachable(args.gateway, str(error))) from None
        return (answer.choices[0].message.content or "") if answer.choices else ""

    shown = not args.json and sys.stderr.isatty()

    def progress(done: int) -> None:
        if shown:
            end = "\n" if done == task.size else ""
            print(_bar(done, task.size), end=end, file=sys.stderr, flush=True)

    try:
        with client, ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            result = score(
                task, ask, n_shot=args.n_shot, language=args.lang, map_=pool.map, progress=progress
            )
    except CommandError as error:
        return fail(str(error))
    correct, asked = result.overall
    names = {s.key: s.name for s in task.subjects}
    summary = BenchmarkSummary(
        model=args.model,
        task=str(args.benchmark),
        split=task.split,
        n_shot=args.n_shot,
        accuracy=correct / asked if asked else 0.0,
        correct=correct,
        asked=asked,
        subjects=[
            BenchmarkLine(name=names[k], correct=c, asked=n)
            for k, (c, n) in result.subjects.items()
        ],
        categories=[
            BenchmarkLine(name=k, correct=c, asked=n) for k, (c, n) in result.categories.items()
        ],
    )
    if args.json:
        print_json(summary)
    else:
        print(_benchmark_table(summary))
    return 0


def _either(args: argparse.Namespace) -> int:
    return _benchmark(args) if args.benchmark is not None else _eval(args)


def register(subparsers: Any) -> None:
    """Add ``eval MODEL --data FILE`` to the ``forgeline`` command."""
    parser = subparsers.add_parser(
        "eval",
        help="score a deployed model's answers to a chat file (BLEU, ROUGE, ...)",
        description="Ask a deployed model every prompt of a chat JSONL file (each record's "
        "last message is the reference answer) through the gateway's Evals API, and print the "
        "mean score and pass counts per grader.",
    )
    parser.add_argument("model", metavar="MODEL", help="a deployed model (forgeline deploy list)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        metavar="FILE.jsonl",
        help='chat records, {"messages": [...]}, each ending in the reference answer',
    )
    source.add_argument(
        "--benchmark",
        type=_task_dir,
        metavar="DIR",
        help="a multiple-choice task folder in LLaMA-Factory's layout (mapping.json, "
        f"data/dev, data/test; MMLU, C-Eval, CMMLU), or a built-in one: {', '.join(BUILTIN_TASKS)}",
    )
    parser.add_argument(
        "--split", default="test", help="with --benchmark: the split scored (test, val)"
    )
    parser.add_argument(
        "--n-shot", type=int, default=5, help="with --benchmark: dev examples before each question"
    )
    parser.add_argument(
        "--lang",
        choices=("en", "zh"),
        default="en",
        help="with --benchmark: LLaMA-Factory's prompt language (zh for C-Eval and CMMLU)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="with --benchmark: questions asked at once"
    )
    parser.add_argument(
        "--grader",
        type=_graders,
        default=["rouge_l"],
        metavar="NAME[,NAME...]",
        help=f"graders to score with (default rouge_l): {', '.join(GRADERS)}",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="the score at which a row passes a similarity grader (default 0.5)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="the longest answer asked of the model (default 128; 4 with --benchmark, where "
        "only the first letter counts)",
    )
    gateway_options(parser)
    parser.set_defaults(run=_either)
