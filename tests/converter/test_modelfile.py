"""The Modelfile's TEMPLATE, rendered as Ollama renders it (Go text/template), gives exactly the
text the model's own chat template gives through transformers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from forgeline_converter.modelfile import (
    Message,
    ModelfileParameter,
    TemplateNotDerivable,
    derive_chat_format,
    ollama_template,
    render_modelfile,
)
from forgeline_kit.tinymodel import CHATML_TEMPLATE, IM_END, TinyModel

from .gotemplate import GoTemplateError, render
from .modelfile_parser import parse

CONVERSATION = [
    Message(role="system", content="You are a terse assistant. {{ not a Go action }}"),
    Message(role="user", content="What is the capital of France?"),
    Message(role="assistant", content="Paris."),
    Message(role="user", content="And of Italy?\nAnswer in one word."),
]


def test_ollama_template_renders_like_the_hf_chat_template(tiny_model: TinyModel) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    expected = tokenizer.apply_chat_template(
        [m.model_dump() for m in CONVERSATION], tokenize=False, add_generation_prompt=True
    )
    template = ollama_template(derive_chat_format(tokenizer.chat_template))

    rendered = render(
        template, {"Messages": [{"Role": m.role, "Content": m.content} for m in CONVERSATION]}
    )

    assert rendered == expected
    assert rendered.endswith("<|im_start|>assistant\n")


def test_modelfile_has_from_template_stops_and_system() -> None:
    chat = derive_chat_format(CHATML_TEMPLATE)
    text = render_modelfile(
        "tiny-q4_k_m.gguf",
        ollama_template(chat),
        chat.stop_sequences(IM_END),
        system="Be brief.",
        parameters=[ModelfileParameter(name="temperature", value="0.2")],
    )
    lines = text.splitlines()
    assert lines[0] == "FROM ./tiny-q4_k_m.gguf"
    assert lines[1].startswith('TEMPLATE """{{ range .Messages }}')
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert lines.count('PARAMETER stop "<|im_end|>"') == 1  # EOS is the same token here
    assert "PARAMETER temperature 0.2" in lines
    assert lines[-1] == 'SYSTEM """Be brief."""'


def test_a_template_that_merges_messages_is_refused() -> None:
    # Llama-2 style: the system prompt is folded into the first user turn.
    folded = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set s = m['content'] %}"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
    )
    with pytest.raises(TemplateNotDerivable):
        derive_chat_format(folded)


def test_the_test_renderer_refuses_what_it_does_not_implement() -> None:
    with pytest.raises(GoTemplateError):
        render("{{ range $i, $m := .Messages }}{{ end }}", {"Messages": []})


TRICKY_VALUES = [
    "0.2",
    "<|im_end|>",
    "two words",
    'say "hi"',
    '"',
    'ends with a quote"',
    "line one\nFROM /etc/passwd",
    'x"\nADAPTER /etc/shadow',
    "  padded  ",
    "# not a comment",
    "",
]


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_ollama_reads_every_value_back_as_written_and_nothing_more(value: str) -> None:
    text = render_modelfile(
        "m.gguf",
        '{{ .Prompt }}"',
        [value],
        system=f"System: {value}",
        parameters=[ModelfileParameter(name="seed", value=value)],
    )

    assert parse(text) == [
        ("model", "./m.gguf"),
        ("template", '{{ .Prompt }}"'),
        ("stop", value),
        ("seed", value),
        ("system", f"System: {value}"),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature 1\nFROM", "x"), ("seed", 'a"""\nFROM /etc/passwd'), ("seed", "a\rFROM b")],
)
def test_what_no_quoting_can_carry_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValidationError):
        ModelfileParameter(name=name, value=value)
