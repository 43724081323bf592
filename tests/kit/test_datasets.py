"""Dataset files are checked record by record; errors name the record and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forgeline_kit.datasets import (
    DatasetFormat,
    DatasetSpec,
    InvalidDataset,
    validate_dataset,
    write_dataset_info,
)
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
