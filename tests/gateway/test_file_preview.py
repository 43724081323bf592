"""The dataset preview: a fine-tuning file's first records rendered through the base model's chat
template, with the spans the loss is computed on marked exactly where LLaMA-Factory puts them
(its own template encoder, on the tiny model's tokenizer, is the reference)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from evals.conftest import ThreadRegistry
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
from transformers import AutoTokenizer

from forgeline_cli.walkthrough import register_base_model
from forgeline_gateway.files.preview import render_segments
from forgeline_kit.tinymodel import CHATML_TEMPLATE, LLAMAFACTORY_TEMPLATE, TinyModel

from .conftest import Served, StartGateway

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Codename?"},
    {"role": "assistant", "content": "Copperfinch."},
    {"role": "user", "content": "Port?"},
    {"role": "assistant", "content": "8080"},
]


def _trained(segments: list[Any]) -> list[str]:
    return [s.text for s in segments if s.trained]


def test_the_trained_spans_are_llamafactorys(tiny_model: TinyModel) -> None:
    tokenizer: Any = AutoTokenizer.from_pretrained(tiny_model.path)
    template = get_template_and_fix_tokenizer(
        tokenizer, DataArguments(template=LLAMAFACTORY_TEMPLATE)
    )
    pairs = template.encode_multiturn(tokenizer, TURNS, system=SYSTEM["content"])

    def decode(ids: list[int]) -> str:
        text: str = tokenizer.decode(ids, skip_special_tokens=False)
        return text

    segments = render_segments(CHATML_TEMPLATE, [SYSTEM, *TURNS])

    # LLaMA-Factory's labels are each answer with its end of turn; its prompts are the rest.
    assert _trained(segments) == [decode(answer) for _, answer in pairs]
    assert [s.text for s in segments if not s.trained] == [decode(prompt) for prompt, _ in pairs]
    assert "".join(s.text for s in segments) == tokenizer.apply_chat_template(
        [SYSTEM, *TURNS], tokenize=False
    )


def test_mask_history_and_train_on_prompt() -> None:
    conversation = [SYSTEM, *TURNS]
    assert _trained(render_segments(CHATML_TEMPLATE, conversation, mask_history=True)) == [
        "8080<|im_end|>\n"
    ]
    everything = render_segments(CHATML_TEMPLATE, conversation, train_on_prompt=True)
    assert [s.trained for s in everything] == [True]


def test_a_template_that_drops_a_message_says_so() -> None:
    no_system = "{% for m in messages if m.role != 'system' %}{{ m.content }}\n{% endfor %}"
    with pytest.raises(Exception, match=r"leaves out message 1 \(system\)"):
        render_segments(no_system, [SYSTEM, *TURNS])


@pytest.fixture
def registry(tmp_path: Path, tiny_model: TinyModel) -> Iterator[ThreadRegistry]:
    """A registry holding the tiny model as `tiny-llama` (with its chat template), and as
    `bare` (without one)."""
    started = ThreadRegistry(tmp_path / "registry").start()
    register_base_model(started.target, tiny_model)
    yield started
    started.stop()


@pytest.fixture
def gateway(start_gateway: StartGateway, registry: ThreadRegistry) -> Served:
    return start_gateway({"registry_target": registry.target, "registry_local_files": True})


def _upload(gateway: Served, name: str, lines: list[Any], purpose: str = "fine-tune") -> str:
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    response = httpx.post(
        f"{gateway.url}/v1/files",
        headers={"Authorization": f"Bearer {gateway.admin_key}"},
        data={"purpose": purpose},
        files={"file": (name, body, "application/jsonl")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _preview(gateway: Served, file_id: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/v1/files/{file_id}/preview",
        headers={"Authorization": f"Bearer {gateway.admin_key}"},
        params=params,
        timeout=60,
    )


def test_the_preview_endpoint_renders_a_files_records(gateway: Served) -> None:
    file_id = _upload(
        gateway,
        "chat.jsonl",
        [{"messages": [SYSTEM, *TURNS]}, {"messages": TURNS[:2]}, {"messages": TURNS[2:]}],
    )

    response = _preview(gateway, file_id, model="tiny-llama", limit=2)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["model"], body["file_id"]) == (
        "file.preview",
        "tiny-llama:1",
        file_id,
    )
    first, second = body["data"]
    assert [s["text"] for s in first["segments"] if s["trained"]] == [
        "Copperfinch.<|im_end|>\n",
        "8080<|im_end|>\n",
    ]
    assert second["index"] == 1
    assert "".join(s["text"] for s in second["segments"]) == (
        "<|im_start|>user\nCodename?<|im_end|>\n<|im_start|>assistant\nCopperfinch.<|im_end|>\n"
    )
    history = _preview(gateway, file_id, model="tiny-llama", mask_history="true").json()
    assert [s["text"] for s in history["data"][0]["segments"] if s["trained"]] == [
        "8080<|im_end|>\n"
    ]


def test_the_preview_names_what_is_wrong(gateway: Served) -> None:
    file_id = _upload(gateway, "chat.jsonl", [{"messages": TURNS}])
    unknown = _preview(gateway, file_id, model="no-such-model")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "model"
    assert "not in the registry" in unknown.json()["error"]["message"]

    rows = _upload(gateway, "rows.jsonl", [{"item": {"q": "x"}}], purpose="evals")
    refused = _preview(gateway, rows, model="tiny-llama")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "file_id"
