"""The Evals API through the official OpenAI SDK, over real HTTP: evals, runs over the tiny
model on a real llama-server and over the vLLM contract fake (known answers), runs on files
uploaded with purpose ``evals``, output items, pagination, cancellation and errors."""

from __future__ import annotations

import time
from typing import Any

import jieba  # type: ignore[import-untyped]
import openai
import pytest
from fakes.openai_text import WORDS
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # type: ignore[import-untyped]
from rouge_score import rouge_scorer  # type: ignore[import-untyped]

from forgeline_gateway.evals.graders.text_similarity import is_chinese, jieba_words

from .conftest import EvalsStack, jsonl, wait_for_run

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
CRITERIA: list[Any] = [
    {
        "type": "string_check",
        "name": "mentions the answer",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "ilike",
    },
    {
        "type": "text_similarity",
        "name": "rouge_l",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "rouge_l",
        "pass_threshold": 0.3,
    },
]
ROWS = [
    {"item": {"question": "Who serves this answer?", "answer": "Forgeline serves"}},
    {"item": {"question": "What is the codename?", "answer": "Copperfinch"}},
    {"item": {"question": "Name the product.", "answer": "forgeline"}},
]
TEMPLATE: Any = {
    "type": "template",
    "template": [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "{{item.question}}"},
    ],
}


def make_eval(client: openai.OpenAI, **overrides: Any) -> Any:
    params: dict[str, Any] = {
        "name": "qa",
        "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
        "testing_criteria": CRITERIA,
    }
    params.update(overrides)
    return client.evals.create(**params)


def completions(model: str, rows: list[Any], **sampling: Any) -> Any:
    return {
        "type": "completions",
        "model": model,
        "input_messages": TEMPLATE,
        "source": {"type": "file_content", "content": rows},
        "sampling_params": {"temperature": 0, "seed": 7, **sampling},
    }


class JiebaWords:
    """rouge-score's tokenizer interface over jieba, for Chinese as LLaMA-Factory segments it."""

    def tokenize(self, text: str) -> list[str]:
        return [word for word in jieba.cut(text) if word.strip()]


def rouge_l(hypothesis: str, reference: str) -> float:
    """rouge-score's ROUGE-L F-measure (on jieba's words where either text is Chinese)."""
    tokenizer = JiebaWords() if is_chinese(hypothesis, reference) else None
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)
    return float(scorer.score(reference, hypothesis)["rougeL"].fmeasure)


def test_an_eval_is_created_retrieved_updated_listed_and_deleted(stack: EvalsStack) -> None:
    client = stack.client()

    created = make_eval(
        client,
        metadata={"team": "qa"},
        data_source_config={
            "type": "custom",
            "item_schema": ITEM_SCHEMA,
            "include_sample_schema": True,
        },
    )

    assert created.id.startswith("eval_")
    assert (created.object, created.name, created.metadata) == ("eval", "qa", {"team": "qa"})
    schema = created.data_source_config.schema_
    assert created.data_source_config.type == "custom"
    assert schema["properties"]["item"] == ITEM_SCHEMA
    assert schema["required"] == ["item", "sample"]
    assert [c.name for c in created.testing_criteria] == ["mentions the answer", "rouge_l"]
    assert created.testing_criteria[1].pass_threshold == 0.3
    assert client.evals.retrieve(created.id).model_dump() == created.model_dump()

    renamed = client.evals.update(created.id, name="qa v2", metadata={"team": "ml"})

    assert (renamed.name, renamed.metadata) == ("qa v2", {"team": "ml"})
    assert client.evals.retrieve(created.id).name == "qa v2"

    deleted = client.evals.delete(created.id)

    assert (deleted.deleted, deleted.eval_id, deleted.object) == (True, created.id, "eval.deleted")
    with pytest.raises(openai.NotFoundError) as caught:
        client.evals.retrieve(created.id)
    assert caught.value.body == {
        "message": f"No eval found with id '{created.id}'.",
        "type": "invalid_request_error",
        "param": "eval_id",
        "code": "not_found",
    }


def test_evals_list_in_pages_with_a_cursor(stack: EvalsStack) -> None:
    client = stack.client()
    made = [make_eval(client, name=f"page {i}").id for i in range(5)]

    first = client.evals.list(limit=2, order="desc")
    newest_first = [e.id for e in client.evals.list(limit=2, order="desc")]  # follows pages

    assert [e.id for e in first.data] == made[::-1][:2]
    assert first.has_more
    assert newest_first[:5] == made[::-1]
    ascending = [e.id for e in client.evals.list(limit=3, order="asc")]
    assert [i for i in ascending if i in made] == made
    page = client.evals.list(after=made[1], limit=2, order="asc")
    assert [e.id for e in page.data] == made[2:4]
    time.sleep(1.1)  # updated_at counts seconds
    client.evals.update(made[0], name="touched")
    by_update = client.evals.list(limit=1, order="desc", order_by="updated_at")
    assert by_update.data[0].id == made[0]
    with pytest.raises(openai.BadRequestError) as caught:
        client.evals.list(after="eval_nope")
    assert caught.value.param == "after"


def test_a_completions_run_over_the_tiny_model_grades_each_sample(stack: EvalsStack) -> None:
    client = stack.client()
    created = make_eval(client)

    run = client.evals.runs.create(
        created.id,
        name="tiny run",
        data_source=completions("tiny", ROWS, max_completion_tokens=8),
    )

    assert (run.object, run.status, run.model, run.eval_id) == (
        "eval.run",
        "queued",
        "tiny",
        created.id,
    )
    done = wait_for_run(client, created.id, run.id)
    assert done.status == "completed", done.error
    counts = done.result_counts
    assert counts.total == len(ROWS)
    assert counts.passed + counts.failed + counts.errored == counts.total
    assert counts.errored == 0
    per = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert set(per) == {"mentions the answer", "rouge_l"}
    assert all(passed + failed == len(ROWS) for passed, failed in per.values())
    (usage,) = done.per_model_usage
    assert (usage.run_model_name, usage.invocation_count) == ("tiny", len(ROWS))
    assert usage.completion_tokens > 0

    items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))

    assert [i.datasource_item_id for i in items] == [0, 1, 2]
    passed = 0
    for item, row in zip(items, ROWS, strict=True):
        assert item.datasource_item == row["item"]
        sample = item.sample
        assert [m.role for m in sample.input] == ["system", "user"]
        assert sample.input[1].content == row["item"]["question"]
        (output,) = sample.output
        text = output.content or ""
        assert sample.model == "tiny"
        assert sample.usage.completion_tokens > 0
        assert sample.max_completion_tokens == 8
        assert sample.finish_reason in ("stop", "length")
        results = {r.name: r for r in item.results}
        answer = row["item"]["answer"]
        assert results["rouge_l"].score == pytest.approx(rouge_l(text, answer))
        assert results["rouge_l"].passed == (results["rouge_l"].score >= 0.3)
        assert results["mentions the answer"].score == float(answer.casefold() in text.casefold())
        passed += all(r.passed for r in item.results)
        assert item.status == ("pass" if all(r.passed for r in item.results) else "fail")
        retrieved = client.evals.runs.output_items.retrieve(
            item.id, eval_id=created.id, run_id=run.id
        )
        assert retrieved.model_dump() == item.model_dump()
    assert counts.passed == passed


def test_a_completions_run_over_known_answers_counts_passes_and_failures(
    stack: EvalsStack,
) -> None:
    client = stack.client()
    created = make_eval(client)
    answer = "".join(WORDS[:4])  # the fake answers the first max_completion_tokens words

    run = client.evals.runs.create(
        created.id, data_source=completions("fake", ROWS, max_completion_tokens=4)
    )
    done = wait_for_run(client, created.id, run.id)

    assert done.status == "completed"
    # "Forgeline serves this answer": contains "Forgeline serves" and "forgeline" (ilike), not
    # "Copperfinch"; ROUGE-L of 2 shared words of 4 and 2 = 2/3, of 1 of 4 and 1 = 2/5, 0.
    assert done.result_counts.model_dump() == {"total": 3, "passed": 2, "failed": 1, "errored": 0}
    per = {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results}
    assert per == {"mentions the answer": (2, 1), "rouge_l": (2, 1)}
    items = client.evals.runs.output_items.list(run.id, eval_id=created.id).data
    scores = [{r.name: r.score for r in i.results}["rouge_l"] for i in items]
    assert scores == pytest.approx([2 / 3, 0.0, 2 / 5])
    assert all(i.sample.output[0].content == answer for i in items)
    assert [i.status for i in items] == ["pass", "fail", "pass"]
    failed = client.evals.runs.output_items.list(run.id, eval_id=created.id, status="fail")
    assert [i.datasource_item_id for i in failed.data] == [1]
    sent = stack.fake.requests[-1]
    assert (sent["temperature"], sent["seed"], sent["max_completion_tokens"]) == (0, 7, 4)


def test_a_jsonl_run_grades_the_samples_of_an_uploaded_file(stack: EvalsStack) -> None:
    client = stack.client()
    created = client.evals.create(
        name="chinese qa",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
            "include_sample_schema": True,
        },
        testing_criteria=[
            {
                "type": "text_similarity",
                "name": "bleu",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "bleu",
                "pass_threshold": 0.5,
            },
            {
                "type": "text_similarity",
                "name": "rouge_1",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "rouge_1",
                "pass_threshold": 0.5,
            },
        ],
    )
    rows = [
        {"item": {"answer": "我爱北京"}, "sample": {"output_text": "我爱北京天安门"}},
        {"item": {"answer": "今天天气不错。"}, "sample": {"output_text": "今天天气很好。"}},
        {"item": {"answer": "the cat sat on the mat"}, "sample": {"output_text": "a dog"}},
    ]
    uploaded = client.files.create(file=("rows.jsonl", jsonl(*rows)), purpose="evals")
    assert (uploaded.purpose, (uploaded.model_extra or {})["format"]) == ("evals", "eval_rows")

    run = client.evals.runs.create(
        created.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}}
    )
    done = wait_for_run(client, created.id, run.id)

    assert done.status == "completed"
    assert done.model is None
    assert done.result_counts.total == 3
    items = client.evals.runs.output_items.list(run.id, eval_id=created.id).data
    for item, row in zip(items, rows, strict=True):
        hypothesis, reference = row["sample"]["output_text"], row["item"]["answer"]
        results = {r.name: r.score for r in item.results}
        expected_bleu = sentence_bleu(
            [list(reference)] if "天" in reference or "北" in reference else [reference.split()],
            list(hypothesis) if "天" in reference or "北" in reference else hypothesis.split(),
            smoothing_function=SmoothingFunction().method3,
        )
        assert results["bleu"] == pytest.approx(expected_bleu)
        assert item.sample.output[0].content == hypothesis
    # The Chinese pair by jieba's words, as LLaMA-Factory scores it: 3 of 4 and 3 of 3 -> 6/7.
    assert jieba_words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    first = {r.name: r.score for r in items[0].results}
    assert first["rouge_1"] == pytest.approx(6 / 7)


def test_an_inline_jsonl_run_and_runs_in_pages(stack: EvalsStack) -> None:
    client = stack.client()
    created = make_eval(client)
    rows = [
        {"item": {"question": "q", "answer": "yes"}, "sample": {"output_text": "Yes indeed"}},
        {"item": {"question": "q", "answer": "no"}, "sample": {"output_text": "maybe"}},
    ]
    source: Any = {"type": "jsonl", "source": {"type": "file_content", "content": rows}}
    runs = [client.evals.runs.create(created.id, data_source=source).id for _ in range(3)]
    for run_id in runs:
        # "Yes indeed" contains "yes" (ilike) and has ROUGE-L 2/3 against it; "maybe" neither.
        assert wait_for_run(client, created.id, run_id).result_counts.model_dump() == {
            "total": 2,
            "passed": 1,
            "failed": 1,
            "errored": 0,
        }

    page = client.evals.runs.list(created.id, limit=2)

    assert [r.id for r in page.data] == runs[:2]
    assert page.has_more
    assert [r.id for r in client.evals.runs.list(created.id, limit=1)] == runs
    assert [r.id for r in client.evals.runs.list(created.id, order="desc", limit=5).data] == (
        runs[::-1]
    )
    assert client.evals.runs.list(created.id, status="failed").data == []

    removed = client.evals.runs.delete(runs[0], eval_id=created.id)

    assert (removed.deleted, removed.run_id) == (True, runs[0])
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(runs[0], eval_id=created.id)


def test_a_run_is_cancelled_with_the_items_done_so_far(stack: EvalsStack) -> None:
    client = stack.client()
    created = make_eval(client)
    rows = [{"item": {"question": f"q{i}", "answer": "x"}} for i in range(40)]
    stack.fake.answer_delay = 0.3
    try:
        run = client.evals.runs.create(
            created.id, data_source=completions("fake", rows, max_completion_tokens=2)
        )
        wait_for_run(client, created.id, run.id, "in_progress")
        while client.evals.runs.retrieve(run.id, eval_id=created.id).result_counts.total == 0:
            time.sleep(0.05)

        cancelled = client.evals.runs.cancel(run.id, eval_id=created.id)
    finally:
        stack.fake.answer_delay = 0.0

    assert cancelled.status == "canceled"
    total = cancelled.result_counts.total
    assert 0 < total < len(rows)
    items = list(client.evals.runs.output_items.list(run.id, eval_id=created.id))
    assert len(items) == total
    assert client.evals.runs.retrieve(run.id, eval_id=created.id).status == "canceled"
    with pytest.raises(openai.BadRequestError, match="only a queued or in_progress run"):
        client.evals.runs.cancel(run.id, eval_id=created.id)


def error_of(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_bad_requests_are_openai_errors_naming_the_param(stack: EvalsStack) -> None:
    client = stack.client()
    created = make_eval(client)

    bad_template = error_of(
        lambda: make_eval(
            client,
            testing_criteria=[{**CRITERIA[0], "reference": "{{ answer }}"}],
        )
    )
    assert bad_template.status_code == 400
    assert bad_template.body["param"] == "testing_criteria[0].reference"  # type: ignore[index]
    assert "a reference starts with 'item' or 'sample'" in bad_template.message

    unknown = error_of(lambda: make_eval(client, testing_criteria=[{**CRITERIA[0], "type": "x"}]))
    assert unknown.body["param"] == "testing_criteria[0].type"  # type: ignore[index]
    assert "string_check, text_similarity" in unknown.message

    metric = error_of(
        lambda: make_eval(client, testing_criteria=[{**CRITERIA[1], "evaluation_metric": "wer"}])
    )
    assert metric.body["param"] == "testing_criteria[0].evaluation_metric"  # type: ignore[index]
    assert "'rouge_l'" in metric.message

    no_eval = error_of(lambda: client.evals.runs.list("eval_missing"))
    assert (no_eval.status_code, no_eval.body["param"]) == (404, "eval_id")  # type: ignore[index]

    missing_field = error_of(
        lambda: client.evals.runs.create(
            created.id,
            data_source=completions(
                "fake", [*ROWS, {"item": {"question": "q", "answer": "a", "x": 1}}]
            )
            | {"input_messages": {"type": "template", "template": [
                {"role": "user", "content": "{{item.x}}"}
            ]}},
        )
    )  # fmt: skip
    assert missing_field.status_code == 400
    assert missing_field.body["param"] == "data_source.source.content[0]"  # type: ignore[index]
    assert "'item' has no 'x'" in missing_field.message

    schema = error_of(
        lambda: client.evals.runs.create(
            created.id, data_source=completions("fake", [{"item": {"question": "q"}}])
        )
    )
    assert "does not match the eval's item_schema: 'answer' is a required property" in (
        schema.message
    )

    not_deployed = error_of(
        lambda: client.evals.runs.create(created.id, data_source=completions("nope", ROWS))
    )
    assert (not_deployed.status_code, not_deployed.code) == (404, "model_not_found")

    unsampled: Any = {"type": "jsonl", "source": {"type": "file_content", "content": ROWS}}
    no_sample = error_of(lambda: client.evals.runs.create(created.id, data_source=unsampled))
    assert no_sample.body["param"] == "data_source.source.content[0]"  # type: ignore[index]
    assert "Give each row a 'sample'" in no_sample.message

    stored = error_of(
        lambda: client.evals.runs.create(
            created.id,
            data_source={"type": "completions", "model": "fake", "input_messages": TEMPLATE,
                         "source": {"type": "stored_completions"}},
        )
    )  # fmt: skip
    assert stored.body["param"] == "data_source.source.type"  # type: ignore[index]
    assert "stores no chat completions" in stored.message

    params = error_of(
        lambda: client.evals.runs.create(
            created.id, data_source=completions("fake", ROWS, response_format={"type": "text"})
        )
    )
    assert params.body["param"] == "data_source.sampling_params.response_format"  # type: ignore[index]


def test_files_of_purpose_evals_are_checked_line_by_line(stack: EvalsStack) -> None:
    client = stack.client()
    content = jsonl({"item": {"a": 1}}, {"items": {"a": 1}}, {"item": "x"}) + b"{oops\n"

    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("rows.jsonl", content), purpose="evals")

    assert caught.value.param == "file"
    message = caught.value.message
    assert "line 2: unknown key 'items'" in message
    assert "line 3: 'item' must be a JSON object" in message
    assert "line 4: not valid JSON" in message
    fine_tune = client.files.create(
        file=("chat.jsonl", jsonl({"messages": [{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": "a"}]})),
        purpose="fine-tune",
    )  # fmt: skip
    created = make_eval(client)
    wrong = error_of(
        lambda: client.evals.runs.create(
            created.id,
            data_source={"type": "jsonl", "source": {"type": "file_id", "id": fine_tune.id}},
        )
    )
    assert wrong.body["param"] == "data_source.source.id"  # type: ignore[index]
    assert "not 'evals'" in wrong.message
