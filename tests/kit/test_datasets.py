"""Dataset files are checked record by record; errors name the record and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forgeline_kit.datasets import (
    DatasetFormat,
    DatasetSpec,
    InvalidDataset,
    detect_dataset,
    detect_format,
    prepare_for_llamafactory,
    validate_dataset,
    write_dataset_info,
)
from forgeline_kit.errors import InvalidArgument
from forgeline_kit.tinymodel import (
    DEMO_DATASETS,
    DatasetColumns,
    DatasetInfo,
    DatasetTags,
    demo_dataset,
)

SHAREGPT_TAGS = DatasetTags(
    role_tag="from", content_tag="value", user_tag="human", assistant_tag="gpt"
)


def alpaca(index: int) -> dict[str, str]:
    return {"instruction": f"Question {index}?", "input": "", "output": f"Answer {index}."}


def turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def write(tmp_path: Path, records: Any, suffix: str = ".json") -> Path:
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    else:
        path.write_text(json.dumps(records))
    return path


def problems(spec: DatasetSpec) -> list[str]:
    with pytest.raises(InvalidDataset) as caught:
        validate_dataset(spec)
    assert caught.value.field == f"datasets[{spec.name}]"
    return caught.value.problems


def spec(path: Path, fmt: DatasetFormat, **kwargs: Any) -> DatasetSpec:
    return DatasetSpec(name="mine", path=path, format=fmt, **kwargs)


@pytest.mark.parametrize("name", sorted(DEMO_DATASETS))
def test_the_demo_datasets_are_valid(name: str) -> None:
    demo = demo_dataset(name)
    fmt = {"sft": "alpaca", "dpo": "alpaca", "pt": "pretrain_text"}[demo.stage]
    if demo.info.formatting == "sharegpt":
        fmt = "sharegpt"
    dataset = DatasetSpec(
        name=name,
        path=demo.path(),
        format=DatasetFormat(fmt),
        ranking=demo.info.ranking,
        columns=demo.info.columns or DatasetColumns(),
        tags=demo.info.tags or DatasetTags(),
    )

    assert validate_dataset(dataset) > 0
    # The entry the trainer writes is the one the kit's demo declares.
    assert dataset.info_entry(demo.info.file_name) == demo.info


def test_alpaca_record_without_output_is_named(tmp_path: Path) -> None:
    records = [alpaca(i) for i in range(20)]
    del records[16]["output"]

    assert problems(spec(write(tmp_path, records), DatasetFormat.ALPACA)) == [
        "record 17: 'output' is missing"
    ]


def test_alpaca_fields_must_be_text_and_history_pairs(tmp_path: Path) -> None:
    records = [
        {"instruction": "", "output": "x"},
        {"instruction": "q", "output": 3},
        {"instruction": "q", "output": "a", "history": [["only one"]]},
        "not an object",
    ]

    assert problems(spec(write(tmp_path, records), DatasetFormat.ALPACA)) == [
        "record 1: 'instruction' is empty",
        "record 2: 'output' must be text, not int",
        "record 3: 'history' must be a list of [instruction, response] pairs of text",
        "record 4: must be a JSON object, not str",
    ]


def test_alpaca_preference_needs_chosen_and_rejected(tmp_path: Path) -> None:
    records = [{"instruction": "q", "chosen": "good"}]

    assert problems(spec(write(tmp_path, records), DatasetFormat.ALPACA, ranking=True)) == [
        "record 1: 'rejected' is missing"
    ]


def test_sharegpt_with_system_tools_and_function_turns_is_valid(tmp_path: Path) -> None:
    tools = json.dumps([{"name": "weather", "parameters": {"type": "object"}}])
    call = json.dumps({"name": "weather", "arguments": {"city": "Oslo"}})
    records = [
        {
            "system": "Be brief.",
            "tools": tools,
            "conversations": [
                turn("human", "Weather in Oslo?"),
                turn("function_call", call),
                turn("observation", '{"sky": "clear"}'),
                turn("gpt", "Clear."),
            ],
        },
        {"conversations": [turn("system", "Be kind."), turn("human", "Hi"), turn("gpt", "Hello")]},
    ]

    assert validate_dataset(spec(write(tmp_path, records), DatasetFormat.SHAREGPT)) == 2


def test_sharegpt_turn_order_and_tool_json_are_checked(tmp_path: Path) -> None:
    records = [
        {"conversations": [turn("gpt", "Hi"), turn("human", "Hello")]},
        {"conversations": [turn("human", "Hi")]},
        {"conversations": [turn("human", "Hi"), turn("function_call", "weather please")]},
        {"tools": "[not json", "conversations": [turn("human", "Hi"), turn("gpt", "Yo")]},
        {"messages": []},
    ]

    assert problems(spec(write(tmp_path, records), DatasetFormat.SHAREGPT)) == [
        "record 1: 'conversations'[0]: 'from' is 'gpt' but 'human' or 'observation' must come "
        "here; 'conversations'[1]: 'from' is 'human' but 'gpt' or 'function_call' must come here",
        "record 2: 'conversations' must end with a 'gpt' or 'function_call' turn",
        "record 3: 'conversations'[1]: 'value' of a function call must be JSON with 'name' and "
        "'arguments'",
        "record 4: 'tools' must be a JSON list of tool definitions",
        "record 5: 'conversations' is missing",
    ]


def test_sharegpt_preference_ends_with_the_user_then_a_pair(tmp_path: Path) -> None:
    good = {
        "conversations": [turn("human", "Hi")],
        "chosen": turn("gpt", "Hello!"),
        "rejected": turn("gpt", "Go away."),
    }
    bad = {
        "conversations": [turn("human", "Hi"), turn("gpt", "Hello")],
        "chosen": turn("gpt", "Hello!"),
        "rejected": "Go away.",
    }
    path = write(tmp_path, [good, bad])

    assert problems(spec(path, DatasetFormat.SHAREGPT, ranking=True, tags=SHAREGPT_TAGS)) == [
        "record 2: 'conversations' must end with a 'human' turn before the chosen/rejected "
        "answers; 'rejected' must be a message with 'from' and 'value'"
    ]


def test_pretraining_text_from_jsonl_names_the_record(tmp_path: Path) -> None:
    records = [{"text": "one"}, {"body": "two"}, {"text": "three"}]
    path = write(tmp_path, records, ".jsonl")

    assert problems(spec(path, DatasetFormat.PRETRAIN_TEXT)) == ["record 2: 'text' is missing"]


def test_kto_labels_must_be_booleans(tmp_path: Path) -> None:
    records = [alpaca(1) | {"label": True}, alpaca(2) | {"label": "yes"}]
    columns = DatasetColumns(kto_tag="label")

    assert problems(spec(write(tmp_path, records), DatasetFormat.ALPACA, columns=columns)) == [
        "record 2: 'label' must be true or false"
    ]


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        ('{"instruction": "q", "output": "a"}\n{broken\n', ".jsonl", "record 2: not valid JSON"),
        ('[{"instruction": "q",\n', ".json", "line 2: not valid JSON"),
        ('{"instruction": "q"}', ".json", "the file must hold a JSON list of records"),
        ("[]", ".json", "the file holds no records"),
        ("q,a\n", ".csv", "unsupported file type '.csv'"),
    ],
)
def test_unreadable_files_say_why(tmp_path: Path, content: str, suffix: str, expected: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_text(content)

    assert problems(spec(path, DatasetFormat.ALPACA))[0].startswith(expected)


def test_many_bad_records_are_counted_not_all_listed(tmp_path: Path) -> None:
    records = [{"instruction": f"q{i}"} for i in range(50)]

    with pytest.raises(InvalidDataset) as caught:
        validate_dataset(spec(write(tmp_path, records), DatasetFormat.ALPACA))

    assert len(caught.value.problems) == 20
    assert "has 50 bad record(s)" in caught.value.message
    assert caught.value.message.endswith("... and 30 more")


def test_dataset_info_is_written_for_llamafactory(tmp_path: Path) -> None:
    sft = spec(write(tmp_path, [alpaca(1)]), DatasetFormat.ALPACA)
    text = tmp_path / "corpus.txt"
    text.write_text("first document\nsecond document\n")
    pretrain = DatasetSpec(name="corpus", path=text, format=DatasetFormat.PRETRAIN_TEXT)

    info_path = write_dataset_info(tmp_path / "job", [sft, pretrain])

    info = DatasetInfo.model_validate_json(info_path.read_text()).root
    assert info["mine"].file_name == "mine.json"
    assert (tmp_path / "job" / "mine.json").read_text() == sft.path.read_text()
    assert info["corpus"].columns == DatasetColumns(prompt="text")
    assert json.loads(info_path.read_text())["mine"] == {
        "file_name": "mine.json",
        "formatting": "alpaca",
        "ranking": False,
    }


# --- OpenAI's layouts -----------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object"}},
}


def msg(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages), **extra}


def preference(prompt: str, good: str, bad: str) -> dict[str, Any]:
    return {
        "input": {"messages": [msg("user", prompt)]},
        "preferred_output": [msg("assistant", good)],
        "non_preferred_output": [msg("assistant", bad)],
    }


PLAIN_CHAT = [
    chat(msg("system", "Be brief."), msg("user", "Codename?"), msg("assistant", "Copperfinch.")),
    chat(
        msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Port?"), msg("assistant", "8080")
    ),
]

TOOL_CHAT = chat(
    msg("user", "Weather in Oslo?"),
    msg("assistant", None, tool_calls=[tool_call("c1", "weather", '{"city": "Oslo"}')]),
    msg("tool", '{"sky": "clear"}', tool_call_id="c1"),
    msg("assistant", "Clear.", weight=1),
    msg("user", [{"type": "text", "text": "Thanks"}]),
    msg("assistant", "Bye.", weight=0),
    tools=[WEATHER_TOOL],
)


def openai_spec(path: Path, fmt: DatasetFormat = DatasetFormat.OPENAI_CHAT) -> DatasetSpec:
    return DatasetSpec(name="mine", path=path, format=fmt)


def test_openai_chat_with_tools_weights_and_parts_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, [*PLAIN_CHAT, TOOL_CHAT], ".jsonl")

    assert validate_dataset(openai_spec(path)) == 3


def test_openai_chat_errors_name_the_line_and_field(tmp_path: Path) -> None:
    lines = [
        PLAIN_CHAT[0],
        PLAIN_CHAT[1],
        chat(msg("user", "Hi"), msg("bot", "Hello")),
        chat(msg("user", "Hi")),
        chat(msg("user", "Hi"), msg("assistant", "Yo", weight=2)),
        chat(
            msg("user", "Hi"),
            msg("assistant", None, tool_calls=[tool_call("c", "weather", "Oslo")]),
        ),
        {"prompt": "Hi"},
        chat(msg("assistant", "I speak first"), msg("user", "Hi"), msg("assistant", "Yo")),
        chat(
            msg("user", "Hi"),
            msg("assistant", "A", weight=0),
            msg("user", "?"),
            msg("assistant", "B"),
        ),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")

    assert problems(openai_spec(path)) == [
        "line 3: messages[1].role: must be one of system, user, assistant, tool (got 'bot')",
        "line 4: messages: needs at least one assistant message (the answers to learn)",
        "line 5: messages[1].weight: must be 0 or 1 (got 2)",
        "line 6: messages[1].tool_calls[0].function.arguments: must be a string holding a JSON "
        "object",
        "line 7: messages: is missing",
        "line 8: messages[0].role: the conversation must start with a user message "
        "(got 'assistant')",
        "line 9: messages[1].weight: 0 is only supported after the last assistant message with "
        "weight 1 (split the conversation, or give it weight 1)",
        "line 10: not valid JSON (Expecting property name enclosed in double quotes)",
    ]


def test_openai_preference_errors_name_the_line_and_field(tmp_path: Path) -> None:
    good = preference("Codename?", "Copperfinch.", "No idea.")
    ends_with_answer = preference("Hi", "Hello", "Go away")
    ends_with_answer["input"]["messages"].append(msg("assistant", "Hey"))
    two_outputs = preference("Hi", "Hello", "Go away")
    two_outputs["preferred_output"].append(msg("assistant", "More"))
    user_output = preference("Hi", "Hello", "Go away")
    user_output["non_preferred_output"] = [msg("user", "Hello?")]
    path = write(tmp_path, [good, ends_with_answer, two_outputs, user_output], ".jsonl")

    assert problems(openai_spec(path, DatasetFormat.OPENAI_PREFERENCE)) == [
        "line 2: input.messages[1].role: the input must end with a user or tool message, which "
        "the preferred and non-preferred outputs answer",
        "line 3: preferred_output: must be a list holding exactly one assistant message",
        "line 4: non_preferred_output[0].role: must be 'assistant' (got 'user')",
    ]


def test_openai_files_must_be_json_lines(tmp_path: Path) -> None:
    path = write(tmp_path, PLAIN_CHAT, ".json")

    assert problems(openai_spec(path)) == [
        "OpenAI fine-tuning files are JSON Lines: one JSON object per line"
    ]


@pytest.mark.parametrize(
    ("records", "suffix", "fmt", "ranking"),
    [
        (PLAIN_CHAT, ".jsonl", DatasetFormat.OPENAI_CHAT, False),
        ([preference("q", "a", "b")], ".jsonl", DatasetFormat.OPENAI_PREFERENCE, False),
        ([alpaca(1)], ".json", DatasetFormat.ALPACA, False),
        ([alpaca(1)], ".jsonl", DatasetFormat.ALPACA, False),
        (
            [{"instruction": "q", "chosen": "a", "rejected": "b"}],
            ".json",
            DatasetFormat.ALPACA,
            True,
        ),
        (
            [{"conversations": [turn("human", "q"), turn("gpt", "a")]}],
            ".json",
            DatasetFormat.SHAREGPT,
            False,
        ),
        (
            [
                {
                    "conversations": [turn("human", "q")],
                    "chosen": turn("gpt", "a"),
                    "rejected": turn("gpt", "b"),
                }
            ],
            ".jsonl",
            DatasetFormat.SHAREGPT,
            True,
        ),
        (PLAIN_CHAT, ".json", DatasetFormat.SHAREGPT, False),
    ],
)
def test_an_uploads_layout_is_detected_and_validates(
    tmp_path: Path, records: Any, suffix: str, fmt: DatasetFormat, ranking: bool
) -> None:
    path = write(tmp_path, records, suffix)

    detected = detect_dataset(path)

    assert (detected.format, detected.ranking) == (fmt, ranking)
    assert detect_format(path) is fmt
    assert validate_dataset(detected) == len(records)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_pretraining_text_is_detected_in_llamafactorys_layout(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path, [{"text": "Forgeline turns data into models."}] * 3, suffix)

    detected = detect_dataset(path)

    assert detected.format is DatasetFormat.PRETRAIN_TEXT
    assert validate_dataset(detected) == 3
    entry = detected.info_entry(path.name)
    assert entry.columns is not None
    assert entry.columns.prompt == "text"  # LLaMA-Factory's pt reads the "prompt" column


@pytest.mark.parametrize(
    ("records", "suffix", "fmt"),
    [
        # OpenAI-style messages with a label: kept as sharegpt, so the label survives.
        ([{**PLAIN_CHAT[0], "kto_tag": True}], ".jsonl", DatasetFormat.SHAREGPT),
        (
            [{"conversations": [turn("human", "q"), turn("gpt", "a")], "kto_tag": False}],
            ".json",
            DatasetFormat.SHAREGPT,
        ),
        ([{**alpaca(1), "kto_tag": True}], ".jsonl", DatasetFormat.ALPACA),
    ],
)
def test_kto_labelled_records_keep_their_tag_column(
    tmp_path: Path, records: Any, suffix: str, fmt: DatasetFormat
) -> None:
    path = write(tmp_path, records, suffix)

    detected = detect_dataset(path)

    assert detected.format is fmt
    assert detected.columns.kto_tag == "kto_tag"
    assert validate_dataset(detected) == 1


def test_a_kto_label_that_is_not_a_boolean_names_the_record(tmp_path: Path) -> None:
    records = [{**PLAIN_CHAT[0], "kto_tag": True}, {**PLAIN_CHAT[0], "kto_tag": "yes"}]
    path = write(tmp_path, records, ".jsonl")

    with pytest.raises(InvalidDataset) as caught:
        validate_dataset(detect_dataset(path))

    assert "record 2: 'kto_tag' must be true or false" in caught.value.message


def test_an_unknown_layout_lists_the_accepted_ones(tmp_path: Path) -> None:
    path = write(tmp_path, [{"question": "q", "answer": "a"}], ".jsonl")

    with pytest.raises(InvalidDataset) as caught:
        detect_dataset(path)

    message = caught.value.message
    assert "record 1 (answer, question) is in no layout the Files API accepts" in message
    for layout in (
        "OpenAI chat JSONL",
        "OpenAI preference JSONL",
        "alpaca",
        "sharegpt",
        "pre-training text",
        "KTO",
    ):
        assert layout in message


def test_plain_openai_chat_is_read_by_llamafactory_as_it_is(tmp_path: Path) -> None:
    path = write(tmp_path, PLAIN_CHAT, ".jsonl")

    prepared = prepare_for_llamafactory(openai_spec(path), tmp_path / "prepared")

    assert prepared.path == path
    assert not (tmp_path / "prepared").exists()
    assert prepared.format is DatasetFormat.SHAREGPT
    assert prepared.columns.messages == "messages"
    assert prepared.tags.role_tag == "role"
    assert validate_dataset(prepared) == 2


def test_alpaca_and_sharegpt_need_no_preparing(tmp_path: Path) -> None:
    original = spec(write(tmp_path, [alpaca(1)]), DatasetFormat.ALPACA)

    assert prepare_for_llamafactory(original, tmp_path / "prepared") is original


def test_openai_tool_calls_become_function_call_turns(tmp_path: Path) -> None:
    path = write(tmp_path, [PLAIN_CHAT[0], TOOL_CHAT], ".jsonl")

    prepared = prepare_for_llamafactory(openai_spec(path), tmp_path / "prepared")

    assert prepared.path == tmp_path / "prepared" / "mine.jsonl"
    assert prepared.columns.tools == "tools"
    assert validate_dataset(prepared) == 2
    first, second = (json.loads(line) for line in prepared.path.read_text().splitlines())
    assert first == PLAIN_CHAT[0] | {"tools": ""}
    assert second["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "function_call",
            "content": '[{"name": "weather", "arguments": {"city": "Oslo"}}]',
        },
        {"role": "observation", "content": '{"sky": "clear"}'},
        {"role": "assistant", "content": "Clear."},
    ]  # the trailing weight-0 answer is not learned
    assert json.loads(second["tools"]) == [WEATHER_TOOL]


def test_openai_preference_becomes_a_sharegpt_ranking_file(tmp_path: Path) -> None:
    path = write(tmp_path, [preference("Codename?", "Copperfinch.", "No idea.")], ".jsonl")

    prepared = prepare_for_llamafactory(
        openai_spec(path, DatasetFormat.OPENAI_PREFERENCE), tmp_path / "prepared"
    )

    assert prepared.ranking
    assert validate_dataset(prepared) == 1
    assert json.loads(prepared.path.read_text()) == {
        "messages": [{"role": "user", "content": "Codename?"}],
        "chosen": {"role": "assistant", "content": "Copperfinch."},
        "rejected": {"role": "assistant", "content": "No idea."},
    }


def test_openai_data_is_prepared_before_dataset_info(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="prepare it with prepare_for_llamafactory"):
        openai_spec(write(tmp_path, PLAIN_CHAT, ".jsonl")).info_entry("mine.jsonl")


# LLaMA-Factory's own reader turns each prepared record into prompt/response turns; an empty
# prompt means it skipped the record as malformed.
_LLAMAFACTORY_READ = """
import json, sys
from types import SimpleNamespace
from llamafactory.data.loader import _load_single_dataset
from llamafactory.data.parser import get_dataset_list
from llamafactory.hparams import DataArguments

directory = sys.argv[1]
for attr in get_dataset_list(sys.argv[2:], directory):
    rows = _load_single_dataset(
        attr,
        SimpleNamespace(cache_dir=None, hf_hub_token=None),
        DataArguments(dataset_dir=directory),
        SimpleNamespace(dataloader_num_workers=0),
    )
    keys = ("_prompt", "_response", "_system", "_tools")
    print(json.dumps([{key: row[key] for key in keys} for row in rows]))
"""


def test_llamafactory_reads_prepared_openai_files(
    tmp_path: Path, offline_env: dict[str, str]
) -> None:
    chat_path = write(tmp_path, [PLAIN_CHAT[0], TOOL_CHAT], ".jsonl")
    pref_path = tmp_path / "pref.jsonl"
    pref_path.write_text(json.dumps(preference("Codename?", "Copperfinch.", "No idea.")) + "\n")
    specs = [
        prepare_for_llamafactory(
            DatasetSpec(name=name, path=path, format=fmt), tmp_path / "prepared"
        )
        for name, path, fmt in (
            ("chat", chat_path, DatasetFormat.OPENAI_CHAT),
            ("pref", pref_path, DatasetFormat.OPENAI_PREFERENCE),
        )
    ]
    write_dataset_info(tmp_path / "job", specs)

    done = subprocess.run(  # noqa: S603 - a fixed argument list
        [sys.executable, "-c", _LLAMAFACTORY_READ, str(tmp_path / "job"), "chat", "pref"],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    # LLaMA-Factory logs to stdout too; the script's lines are the JSON lists.
    printed = [line for line in done.stdout.splitlines() if line.startswith("[{")]
    chat_rows, pref_rows = (json.loads(line) for line in printed)
    assert chat_rows[0] == {
        "_prompt": [{"role": "user", "content": "Codename?"}],
        "_response": [{"role": "assistant", "content": "Copperfinch."}],
        "_system": "Be brief.",
        "_tools": "",
    }
    assert [turn["role"] for turn in chat_rows[1]["_prompt"]] == ["user", "function", "observation"]
    assert chat_rows[1]["_response"] == [{"role": "assistant", "content": "Clear."}]
    assert json.loads(chat_rows[1]["_tools"]) == [WEATHER_TOOL]
    assert pref_rows == [
        {
            "_prompt": [{"role": "user", "content": "Codename?"}],
            "_response": [
                {"role": "assistant", "content": "Copperfinch."},
                {"role": "assistant", "content": "No idea."},
            ],
            "_system": "",
            "_tools": "",
        }
    ]


@pytest.mark.parametrize(
    ("suffix", "start", "detected", "validated"),
    [
        (
            ".jsonl",
            b"\n",
            "line 2: not UTF-8 text (byte 20 of the line cannot be read)",
            "record 2: not UTF-8 text (byte 20 of the line cannot be read)",
        ),
        (
            ".json",
            b"[\n",
            "line 2: not UTF-8 text (byte 22 of the file cannot be read)",
            "line 2: not UTF-8 text (byte 22 of the file cannot be read)",
        ),
    ],
)
def test_a_file_that_is_not_utf8_names_the_line(
    tmp_path: Path, suffix: str, start: bytes, detected: str, validated: str
) -> None:
    path = tmp_path / f"data{suffix}"
    end = b"]" if suffix == ".json" else b""
    path.write_bytes(start + b'{"instruction": "caf\xe9", "output": "x"}' + end + b"\n")

    with pytest.raises(InvalidDataset) as caught:
        detect_dataset(path)
    assert caught.value.problems == [detected]
    assert problems(spec(path, DatasetFormat.ALPACA)) == [validated]


def test_one_mapped_column_keeps_llamafactorys_defaults_for_the_others(tmp_path: Path) -> None:
    # LLaMA-Factory reads unset columns of a mapping as None, not as its defaults.
    kto = spec(tmp_path / "kto.jsonl", DatasetFormat.SHAREGPT, columns=DatasetColumns(kto_tag="ok"))
    assert kto.info_entry("kto.jsonl").columns == DatasetColumns(
        messages="conversations", kto_tag="ok"
    )
    pairs = spec(tmp_path / "pairs.json", DatasetFormat.ALPACA, ranking=True)
    assert pairs.info_entry("pairs.json").columns == DatasetColumns(
        prompt="instruction", query="input", chosen="chosen", rejected="rejected"
    )
    plain = spec(tmp_path / "plain.json", DatasetFormat.ALPACA)
    assert plain.info_entry("plain.json").columns is None
