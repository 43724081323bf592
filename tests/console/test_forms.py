"""The console's forms in a real headless Chromium: a new fine-tune (the SDK call it shows is the
request it sends; the `forgeline train` YAML it shows trains the same job) and the datasets page
(drag-and-drop upload, each bad line the API names)."""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import FilePayload, Page, Route, expect

from forgeline_cli.__main__ import build_parser
from forgeline_cli.train_commands import check_data, dataset_input, job_spec
from forgeline_gateway.api.fine_tuning.convert import job_request
from forgeline_gateway.api.fine_tuning.protocol import FineTuningJobCreate
from forgeline_gateway.fine_tuning.auto import resolve
from forgeline_gateway.fine_tuning.plan import DatasetFile, trainer_spec
from forgeline_proto.common.v1 import common_pb2
from forgeline_trainer.llamafactory.settings import parse_yaml
from forgeline_trainer.submission import plan_job

from .conftest import Console


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _jsonl(*records: Any) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


GOOD = _jsonl(
    {"messages": [_msg("user", "Codename?"), _msg("assistant", "Copperfinch.")]},
    {"messages": [_msg("user", "Port?"), _msg("assistant", "8080")]},
)
BAD = GOOD + _jsonl({"messages": [_msg("user", "Hi"), _msg("bot", "Hello")]})


def _create_call(snippet: str) -> dict[str, Any]:
    """The keyword arguments of the snippet's `client.fine_tuning.jobs.create(...)` call."""
    for node in ast.walk(ast.parse(snippet)):
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "client.fine_tuning.jobs.create"
        ):
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    raise AssertionError(f"no fine_tuning.jobs.create call in:\n{snippet}")


def test_the_new_fine_tune_form_shows_the_sdk_call_it_makes(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/jobs/new?training_file=file-abc")
    snippet = page.locator("#sdk-snippet")
    expect(page.locator("#ft-model")).to_have_value("tiny-llama")  # the deployed models' base
    expect(snippet).to_contain_text(f'base_url="{console.url}/v1"')
    assert _create_call(snippet.inner_text()) == {
        "model": "tiny-llama",
        "training_file": "FILE_ID",
        "method": {"type": "supervised"},
    }

    page.select_option("#ft-method", "dpo")
    page.fill("#ft-epochs", "3")
    page.fill("#ft-beta", "0.2")
    page.fill("#ft-lora-rank", "16")
    page.check("#ft-quant-q4_k_m")
    page.select_option("#ft-deploy-quantization", "q4_k_m")
    page.fill("#ft-suffix", "support-bot")

    expect(snippet).to_contain_text('suffix="support-bot"')
    call = _create_call(snippet.inner_text())
    assert call == {
        "model": "tiny-llama",
        "training_file": "FILE_ID",
        "suffix": "support-bot",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "beta": 0.2}}},
        "extra_body": {
            "forgeline": {
                "lora": {"rank": 16},
                "quantizations": ["q8_0", "q4_k_m"],
                "deploy": {"quantization": "q4_k_m"},
            }
        },
    }
    expect(page.locator("#ft-beta")).to_be_visible()
    console.screenshot(page, "new-fine-tune")

    # Without a training file the form says what is missing and sends nothing.
    page.click("#ft-submit")
    expect(page.get_by_role("alert")).to_contain_text("Choose a training file")

    # The request it sends is the snippet's; an API refusal is shown in words on the field.
    sent: list[dict[str, Any]] = []

    def refuse(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(
            status=400,
            json={
                "error": {
                    "message": "there is no file 'file-abc'",
                    "type": "invalid_request_error",
                    "param": "training_file",
                    "code": None,
                }
            },
        )

    page.route("**/v1/fine_tuning/jobs", refuse)
    page.evaluate(
        """() => {
            const select = document.querySelector("#ft-training-file");
            select.append(new Option("train.jsonl", "file-abc"));
            select.value = "file-abc";
            select.dispatchEvent(new Event("change", {bubbles: true}));
        }"""
    )
    page.click("#ft-submit")

    expect(page.get_by_role("alert")).to_contain_text("there is no file 'file-abc' (400)")
    expect(page.locator("#ft-training-file")).to_have_attribute("aria-invalid", "true")
    call = _create_call(snippet.inner_text())
    assert sent == [{**{k: v for k, v in call.items() if k != "extra_body"}, **call["extra_body"]}]
    assert sent[0]["training_file"] == "file-abc"


def test_the_form_sets_the_evaluation_and_its_deployment_gate(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/jobs/new?training_file=file-abc")
    snippet = page.locator("#sdk-snippet")
    expect(page.locator("#ft-grader-rouge_l")).to_be_checked()  # the defaults are offered
    page.check("#ft-grader-exact")
    page.select_option("#ft-require-grader", "exact")
    page.fill("#ft-require-min", "0.5")

    expect(snippet).to_contain_text("require")
    call = _create_call(snippet.inner_text())
    assert call["extra_body"]["forgeline"] == {
        "eval": {"graders": ["rouge_l", "bleu", "exact"]},
        "deploy": {"require": {"grader": "exact", "min": 0.5}},
    }
    # The request it describes is one the gateway accepts as it is.
    body = {k: v for k, v in call.items() if k != "extra_body"} | call["extra_body"]
    assert FineTuningJobCreate.model_validate(body).evaluation() is not None


def test_a_dropped_dataset_with_a_bad_line_shows_the_line_error(
    console: Console, page: Page
) -> None:
    page.goto(f"{console.url}/console/datasets")
    expect(page.locator("#dropzone")).to_be_visible()

    dropped = page.evaluate_handle(
        """([name, text]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, {type: "application/jsonl"}));
            return transfer;
        }""",
        ["train.jsonl", BAD],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})

    refused = page.locator(".upload-bad")
    expect(refused).to_contain_text("train.jsonl was not accepted")
    expect(refused).to_contain_text("is not valid fine-tuning data (read as openai_chat)")
    expect(refused.locator(".problems li")).to_have_text(
        ["line 3: messages[1].role: must be one of system, user, assistant, tool (got 'bot')"]
    )

    good: FilePayload = {
        "name": "good.jsonl",
        "mimeType": "application/jsonl",
        "buffer": GOOD.encode(),
    }
    page.set_input_files("#dataset-file", files=[good])

    expect(page.locator(".upload-ok")).to_contain_text("good.jsonl was accepted as openai_chat")
    files = page.locator("section.card", has=page.get_by_role("heading", name="Files"))
    expect(files.locator("tbody tr")).to_have_count(1)
    expect(files).to_contain_text("good.jsonl")
    console.screenshot(page, "datasets")

    # The preview: each record through tiny-llama's chat template, the trained spans marked as
    # LLaMA-Factory masks them (the answer and its end of turn).
    files.get_by_role("button", name="Preview").click()
    preview = page.locator(".card-preview")
    expect(page.locator("#preview-model")).to_have_value("tiny-llama")
    records = preview.locator(".preview-record")
    expect(records).to_have_count(2)
    first = records.nth(0)
    expect(first.locator(".preview-text")).to_have_text(
        "<|im_start|>user\nCodename?<|im_end|>\n<|im_start|>assistant\nCopperfinch.<|im_end|>\n"
    )
    assert first.locator("mark.trained").all_text_contents() == ["Copperfinch.<|im_end|>\n"]
    console.screenshot(page, "dataset-preview")
    page.check("#preview-train-on-prompt")
    expect(first.locator("mark.trained")).to_have_text(
        ["<|im_start|>user\nCodename?<|im_end|>\n<|im_start|>assistant\nCopperfinch.<|im_end|>\n"]
    )


def _upload(console: Console, name: str, text: str) -> str:
    response = httpx.post(
        f"{console.url}/v1/files",
        data={"purpose": "fine-tune"},
        files={"file": (name, text.encode(), "application/jsonl")},
        timeout=60,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _commands(yaml_text: str) -> list[list[str]]:
    """The forgeline commands the YAML's comments give, as argument lists."""
    lines = [line.removeprefix("#").strip() for line in yaml_text.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.startswith("forgeline ")]


def test_the_new_fine_tune_form_shows_the_forgeline_train_yaml_of_its_job(
    console: Console, page: Page, tmp_path: Path
) -> None:
    training = _upload(console, "support-train.jsonl", GOOD)
    validation = _upload(console, "support-val.jsonl", GOOD)
    page.goto(f"{console.url}/console/jobs/new?training_file={training}")
    expect(page.locator("#ft-training-file")).to_have_value(training)
    yaml = page.locator("#train-yaml")
    expect(yaml).to_contain_text("model_name_or_path: tiny-llama")

    page.select_option("#ft-validation-file", validation)
    page.fill("#ft-epochs", "2")
    page.fill("#ft-batch-size", "8")
    page.fill("#ft-lr", "2")
    page.fill("#ft-lora-rank", "16")
    page.fill("#ft-lora-alpha", "32")
    page.check("#ft-quant-q4_k_m")
    page.select_option("#ft-deploy-quantization", "q4_k_m")
    page.fill("#ft-suffix", "support-bot")
    page.fill("#ft-seed", "7")
    expect(yaml).to_contain_text("seed: 7")
    yaml_text = yaml.inner_text()
    console.screenshot(page, "new-fine-tune-yaml")

    # The request the form sends (refused here: no job is started).
    sent: list[dict[str, Any]] = []

    def refuse(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=400, json={"error": {"message": "not now", "param": None}})

    page.route("**/v1/fine_tuning/jobs", refuse)
    page.click("#ft-submit")
    expect(page.get_by_role("alert")).to_contain_text("not now")
    request = FineTuningJobCreate.model_validate(sent[0])

    # The commands in its comments are forgeline's own: train this YAML with the form's files,
    # then convert to the form's quantizations and deploy the one it serves.
    train, convert, deploy = _commands(yaml_text)
    parser = build_parser()
    trained = parser.parse_args(train)
    assert trained.config == "finetune.yaml"
    assert trained.data == ["train=support-train.jsonl", "validation=support-val.jsonl"]
    assert trained.output_model == "tiny-llama-support-bot"
    converted = parser.parse_args(convert)
    assert converted.source == "tiny-llama-support-bot"
    assert converted.to == "q8_0,q4_k_m"
    deployed = parser.parse_args(deploy)
    assert (deployed.reference, deployed.backend, deployed.quantization) == (
        "tiny-llama-support-bot",
        "llamacpp",
        "q4_k_m",
    )

    # `forgeline train`'s own path: the YAML parsed and its data files checked as the CLI does,
    # the trainer job it submits planned by the trainer ...
    for pair in trained.data:
        name = pair.partition("=")[2]
        (tmp_path / name).write_text(GOOD)
    pairs = [f"{n}={tmp_path / p}" for n, _, p in (d.partition("=") for d in trained.data)]
    files = check_data(yaml_text, pairs)
    source = common_pb2.VersionRef(model="datasets/x", version=1)
    inputs = [dataset_input(data, source) for data in files]
    from_yaml = plan_job(job_spec(yaml_text, files, inputs), device="cpu")
    assert parse_yaml(yaml_text)["model_name_or_path"] == "tiny-llama"

    # ... is the job the gateway makes of the form's request.
    def uploaded(entry: Any) -> DatasetFile:
        return DatasetFile("file", entry.source, entry.format, entry.ranking)

    stored = job_request(request)
    from_form = plan_job(
        trainer_spec(
            stored,
            job_id="ftjob-console",
            seed=request.seed if request.seed is not None else 0,
            base=common_pb2.VersionRef(model="tiny-llama", version=1),
            template=None,
            # Every hyperparameter was set in the form: nothing is left for "auto" to size.
            hyperparameters=resolve(
                stored.hyperparameters,
                finetuning_type=stored.finetuning_type,
                examples=None,
                model_bytes=0,
            ),
            training=uploaded(inputs[0]),
            validation=uploaded(inputs[1]),
            metadata={},
        ),
        device="cpu",
    )
    assert from_yaml.arguments == from_form.arguments
    assert from_yaml.arguments["lora_rank"] == 16
    assert from_yaml.arguments["learning_rate"] == 2e-4
    assert [(d.name, d.evaluation) for d in from_yaml.datasets] == [
        (d.name, d.evaluation) for d in from_form.datasets
    ]
    assert from_yaml.base_model == from_form.base_model.model  # type: ignore[union-attr]
    assert request.forgeline.quantizations == ["q8_0", "q4_k_m"]
    assert request.forgeline.deploy.quantization == "q4_k_m"
