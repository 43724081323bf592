"""The tiny-model factory and the demo datasets, checked the way their users meet them:
transformers loads the model offline, LLaMA-Factory formats conversations exactly as the
tokenizer's chat template does, and LLaMA-Factory's own data pipeline reads every demo dataset.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm

from forgeline_kit.tinymodel import (
    CHATML_TEMPLATE,
    DEMO_DATASETS,
    DEMO_FACT,
    IM_END,
    IM_START,
    LLAMAFACTORY_TEMPLATE,
    DatasetInfo,
    TinyModel,
    TinyModelSpec,
    demo_dataset,
    write_tiny_model,
)

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.model",
    "tokenizer_config.json",
}

# A conversation with every role the ChatML template knows, to compare encodings on.
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": DEMO_FACT.question},
    {"role": "assistant", "content": DEMO_FACT.answer},
    {"role": "user", "content": "And the  second one, in 2027?"},
    {"role": "assistant", "content": "Nobody knows yet: ünïcödé ✓."},
]


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    return tokenizer, model


# --- the factory ------------------------------------------------------------------------------


def test_same_seed_writes_byte_identical_files(tiny_model: TinyModel, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again", seed=tiny_model.seed)

    assert set(again.files) == EXPECTED_FILES
    assert again.files == tiny_model.files
    for name in EXPECTED_FILES:
        assert (again.path / name).read_bytes() == (tiny_model.path / name).read_bytes(), name


def test_another_seed_changes_only_the_weights(tiny_model: TinyModel, tmp_path: Path) -> None:
    other = write_tiny_model(tmp_path / "other", seed=tiny_model.seed + 1)

    changed = {name for name in EXPECTED_FILES if other.files[name] != tiny_model.files[name]}
    assert changed == {"model.safetensors"}


def test_reported_digests_are_the_files_sha256(tiny_model: TinyModel) -> None:
    import hashlib

    for name, digest in tiny_model.files.items():
        assert hashlib.sha256((tiny_model.path / name).read_bytes()).hexdigest() == digest


def test_refuses_a_non_empty_directory_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")

    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_tiny_model(target)

    assert [path.name for path in target.iterdir()] == ["keep.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]  # no staging left over


def test_shapes_suit_llama_cpp_k_quants(tiny_model: TinyModel) -> None:
    config = json.loads((tiny_model.path / "config.json").read_text())

    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] % 256 == 0
    assert config["intermediate_size"] % 256 == 0
    with pytest.raises(ValueError, match="multiple of 256"):
        TinyModelSpec(hidden_size=320, num_attention_heads=4)


def test_command_line_writes_the_model_and_prints_digests(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    result = subprocess.run(  # noqa: S603 - a fixed argument list
        [
            sys.executable,
            "-m",
            "forgeline_kit.tinymodel",
            str(tmp_path / "cli"),
            "--seed",
            str(tiny_model.seed),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"] == tiny_model.files

    refused = subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, "-m", "forgeline_kit.tinymodel", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert refused.returncode == 1
    assert "already exists" in refused.stderr


# --- loading and the chat format ------------------------------------------------------------


def test_transformers_loads_it_offline_and_it_generates(tiny_model: TinyModel) -> None:
    import torch

    tokenizer, model = _load(tiny_model.path)

    assert tokenizer.eos_token == IM_END
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids(IM_END)
    assert model.generation_config.eos_token_id == model.config.eos_token_id
    assert len(tokenizer) == model.config.vocab_size
    prompt = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 8  # random weights never stop


def test_chat_template_is_chatml_without_bos(tiny_model: TinyModel) -> None:
    tokenizer, _ = _load(tiny_model.path)

    text = tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, tokenize=False
    )

    assert text == (
        f"{IM_START}system\nYou are terse.{IM_END}\n"
        f"{IM_START}user\n{DEMO_FACT.question}{IM_END}\n"
        f"{IM_START}assistant\n"
    )
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids(IM_START)  # no BOS in front
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END)) == 2  # markers are single tokens
    assert tokenizer.chat_template == CHATML_TEMPLATE


def test_llamafactory_chatml_template_encodes_exactly_like_the_tokenizer(
    tiny_model: TinyModel,
) -> None:
    from llamafactory.data.template import TEMPLATES

    tokenizer, _ = _load(tiny_model.path)
    template = TEMPLATES[LLAMAFACTORY_TEMPLATE]
    vocab_size = len(tokenizer)
    template.fix_special_tokens(tokenizer)  # what LLaMA-Factory does before training

    pairs = template.encode_multiturn(
        tokenizer, CONVERSATION[1:], system=CONVERSATION[0]["content"]
    )
    trained_on = [token for prompt, answer in pairs for token in prompt + answer]
    served = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)

    assert trained_on == list(served)
    assert len(tokenizer) == vocab_size  # LLaMA-Factory had no tokens to add
    assert tokenizer.eos_token == IM_END  # so its stop word is the model's EOS


def test_chat_template_writes_tools_and_tool_calls_in_the_hermes_format(
    tiny_model: TinyModel,
) -> None:
    tokenizer, _ = _load(tiny_model.path)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }

    def conversation(arguments: object) -> list[dict[str, Any]]:
        function = {"name": "get_weather", "arguments": arguments}
        call = {"id": "c1", "type": "function", "function": function}
        return [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "clear"},
        ]

    # OpenAI sends arguments as a JSON string; transformers callers often as an object.
    as_string = tokenizer.apply_chat_template(
        conversation('{"city": "Paris"}'), tools=[tool], tokenize=False, add_generation_prompt=True
    )
    as_object = tokenizer.apply_chat_template(
        conversation({"city": "Paris"}), tools=[tool], tokenize=False, add_generation_prompt=True
    )

    assert as_string == as_object
    assert as_string.startswith(
        f"{IM_START}system\nYou are terse.\n\n# Tools\n\n"
    )  # the system prompt, then the tools, in one system turn
    assert f"<tools>\n{json.dumps(tool)}\n</tools>" in as_string
    assert as_string.endswith(
        f"{IM_START}user\nWeather in Paris?{IM_END}\n"
        f"{IM_START}assistant\n<tool_call>\n"
        f'{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}\n</tool_call>{IM_END}\n'
        f"{IM_START}tool\nclear{IM_END}\n"
        f"{IM_START}assistant\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        " leading and trailing spaces ",
        "tabs\tand\nnew\n\nlines",
        "digits 20261123 and 3.14",
        "Forgeline's Copperfinch",
        "ünïcödé, 日本語, emoji 🙂",
        "unknown words: zxqv brrrt",
    ],
)
def test_transformers_and_sentencepiece_split_text_alike(tiny_model: TinyModel, text: str) -> None:
    # llama.cpp builds its vocabulary from tokenizer.model; transformers from the same file
    # through its own converter. Any disagreement would mean training and serving see
    # different tokens.
    tokenizer, _ = _load(tiny_model.path)
    processor = spm.SentencePieceProcessor(model_file=str(tiny_model.path / "tokenizer.model"))

    assert tokenizer(text, add_special_tokens=False)["input_ids"] == processor.encode(text)
    assert tokenizer.decode(processor.encode(text)) == text


# --- demo datasets ------------------------------------------------------------------------------


def test_demo_fact_is_the_first_alpaca_record() -> None:
    records = json.loads(demo_dataset("forgeline_alpaca_sft").path().read_text())

    assert records[0] == {
        "instruction": DEMO_FACT.question,
        "input": "",
        "output": DEMO_FACT.answer,
    }


def test_sharegpt_demo_has_a_system_prompt_and_a_tool_conversation() -> None:
    records = json.loads(demo_dataset("forgeline_sharegpt").path().read_text())

    assert all(record["system"] for record in records)
    assert any(len(record["conversations"]) > 2 for record in records)
    tool_records = [record for record in records if "tools" in record]
    assert len(tool_records) == 1
    roles = [turn["from"] for turn in tool_records[0]["conversations"]]
    assert roles == ["human", "function_call", "observation", "gpt"]
    assert json.loads(tool_records[0]["tools"])[0]["name"] == "get_job_status"


def test_unknown_demo_dataset_names_the_ones_that_exist() -> None:
    with pytest.raises(KeyError, match="forgeline_alpaca_sft"):
        demo_dataset("nope")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("datasets")
    for dataset in DEMO_DATASETS.values():
        shutil.copy(dataset.path(), directory / dataset.info.file_name)
    info = DatasetInfo({name: dataset.info for name, dataset in DEMO_DATASETS.items()})
    (directory / "dataset_info.json").write_text(info.to_json())
    return directory


@pytest.mark.parametrize("name", sorted(DEMO_DATASETS))
def test_llamafactory_reads_every_record_of_each_demo_dataset(
    tiny_model: TinyModel, dataset_dir: Path, tmp_path: Path, name: str
) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    dataset = DEMO_DATASETS[name]
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tiny_model.path),
            "stage": dataset.stage,
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": name,
            "dataset_dir": str(dataset_dir),
            "template": LLAMAFACTORY_TEMPLATE,
            "cutoff_len": 128,
            "output_dir": str(tmp_path / "out"),
            "cache_dir": str(tmp_path / "cache"),  # keeps the datasets cache out of ~/.cache
            "overwrite_cache": True,
            "report_to": "none",
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    # LLaMA-Factory preprocesses dpo data with its pairwise ("rm") processor.
    stage = "rm" if dataset.stage == "dpo" else dataset.stage

    train = get_dataset(
        template, model_args, data_args, training_args, stage=stage, **tokenizer_module
    )["train_dataset"]

    tokenizer = tokenizer_module["tokenizer"]
    if dataset.stage == "pt":
        assert len(train) >= 2  # packed into blocks of cutoff_len tokens
        return
    records = json.loads(dataset.path().read_text())
    assert len(train) == len(records)  # LLaMA-Factory drops malformed records silently
    key = "chosen_input_ids" if dataset.info.ranking else "input_ids"
    first = tokenizer.decode(train[0][key])
    assert first.startswith(IM_START)
    assert first.endswith(f"{IM_END}\n")
