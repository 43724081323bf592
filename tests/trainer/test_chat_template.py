"""A training template that does not fit the tokenizer's chat template is refused."""

from __future__ import annotations

import pytest

from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import LLAMAFACTORY_TEMPLATE, TinyModel
from forgeline_trainer.llamafactory.chat_template import TemplateMismatch, check_chat_template

# Each test imports transformers and LLaMA-Factory's template registry (seconds).
pytestmark = pytest.mark.slow


def test_the_matching_template_passes(tiny_model: TinyModel) -> None:
    check_chat_template(tiny_model.path, LLAMAFACTORY_TEMPLATE)


@pytest.mark.parametrize("template", ["llama3", "qwen", "alpaca"])
def test_a_template_of_another_family_is_refused(tiny_model: TinyModel, template: str) -> None:
    with pytest.raises(TemplateMismatch) as caught:
        check_chat_template(tiny_model.path, template)

    message = caught.value.message
    assert f"template '{template}' does not match the base model's chat template" in message
    assert "inference renders: '<|im_start|>user\\nHello<|im_end|>" in message
    assert "'chatml'" in message
    assert caught.value.field == "template"


def test_an_unknown_template_is_named(tiny_model: TinyModel) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_chat_template(tiny_model.path, "chatlm")

    message = caught.value.message
    assert message.startswith("unknown LLaMA-Factory template 'chatlm'; did you mean")
    assert "'chatml'" in message
