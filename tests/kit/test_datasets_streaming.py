"""Dataset files are read as a stream: a record at a time, within limits on the number of
records and the size of one, and detection reads only the file's start."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from forgeline_kit.datasets import (
    DETECT_LEAD_BYTES,
    DatasetFormat,
    DatasetLimits,
    DatasetSpec,
    DatasetTooLarge,
    InvalidDataset,
    detect_dataset,
    reading,
    validate_dataset,
)


def alpaca(index: int, output: str = "") -> dict[str, str]:
    return {
        "instruction": f"Question {index}?",
        "input": "",
        "output": output or f"Answer {index}.",
    }


def spec(path: Path, fmt: DatasetFormat = DatasetFormat.ALPACA) -> DatasetSpec:
    return DatasetSpec(name="mine", path=path, format=fmt)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def problem(spec: DatasetSpec, limits: DatasetLimits) -> DatasetTooLarge:
    with pytest.raises(DatasetTooLarge) as caught:
        validate_dataset(spec, limits)
    assert caught.value.field == "datasets[mine]"
    return caught.value


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_more_records_than_the_limit_are_refused(tmp_path: Path, suffix: str) -> None:
    records = [alpaca(i) for i in range(4)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        write_jsonl(path, records)

    assert validate_dataset(spec(path), DatasetLimits(max_records=4)) == 4
    error = problem(spec(path), DatasetLimits(max_records=3))

    assert (error.limit, error.value) == ("max_records", 3)
    assert error.problems == [
        "record 4: the file holds more than 3 records, the most one dataset may hold"
    ]
    assert "larger than checking allows" in error.message


def test_a_line_over_the_limit_is_refused_naming_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [alpaca(1), alpaca(2, "x" * 5000), alpaca(3)])
    line = len(json.dumps(alpaca(2, "x" * 5000)))

    assert validate_dataset(spec(path), DatasetLimits(max_record_bytes=line)) == 3
    error = problem(spec(path), DatasetLimits(max_record_bytes=line - 1))

    assert (error.limit, error.value) == ("max_record_bytes", line - 1)
    assert error.problems == [f"line 2: longer than {line - 1} bytes, the most one record may take"]


def test_a_json_list_element_over_the_limit_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([alpaca(1), alpaca(2, "x" * 5000)], indent=1))

    error = problem(spec(path), DatasetLimits(max_record_bytes=4096))

    assert error.limit == "max_record_bytes"
    assert error.problems == [
        "record 2 (from line 7): longer than 4096 bytes, the most one record may take"
    ]


def test_the_byte_limit_counts_utf8_bytes_not_characters(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    # 3000 characters, 6000 bytes.
    path.write_text(json.dumps([alpaca(1, "é" * 3000)], ensure_ascii=False), encoding="utf-8")

    assert validate_dataset(spec(path), DatasetLimits(max_record_bytes=8000)) == 1
    assert problem(spec(path), DatasetLimits(max_record_bytes=5000)).limit == "max_record_bytes"


TRICKY = [
    alpaca(1, 'a "quoted" ] } [ { , answer\\'),
    {"instruction": "ünïcødé ✓ 𝄞", "input": "", "output": "\u2028 line separator"},
    alpaca(3, "x" * 300),
    [1, 2.5e3, -0, True, False, None, "s"],
    12345,
    {"nested": {"deep": [[[{"a": "]"}]]]}},
    "a string record",
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 4096])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_list_read_in_pieces_gives_every_element(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, indent: int | None
) -> None:
    # Elements split across reads at every possible place: `_JsonList` is what the public
    # functions read .json files with, so it is checked against the whole-file parse directly.
    monkeypatch.setattr(reading, "_CHUNK", chunk)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(TRICKY, indent=indent, ensure_ascii=False), encoding="utf-8")

    with path.open("rb") as source:
        assert list(reading._JsonList(source, "mine", 1 << 20)) == TRICKY


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"instruction": "q", "output": "a"},]', "line 1: not valid JSON (Expecting value)"),
        (
            '[{"instruction": "q", "output": "a"}\n{"x": 1}]',
            "line 2: not valid JSON (Expecting ',' delimiter)",
        ),
        ('[{"instruction": "q", "output": "a"}] []', "line 1: not valid JSON (Extra data)"),
        (
            '[{"instruction": "q", "output": "a"}',
            "line 1: not valid JSON (Expecting ',' delimiter)",
        ),
        (
            '[{"instruction": "q"\n\n "output": "a"}]',
            "line 3: not valid JSON (Expecting ',' delimiter)",
        ),
        ("", "the file holds no records"),
        ("\ufeff[]", "the file starts with a byte order mark (BOM): save it as UTF-8 without one"),
        ("hello", "line 1: not valid JSON (Expecting value)"),
    ],
)
def test_a_broken_json_list_names_the_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(InvalidDataset) as caught:
        validate_dataset(spec(path))

    assert caught.value.problems == [expected]


def test_text_files_are_read_line_by_line_within_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first line\n\nsecond \xff line\n" + b"y" * 100 + b"\n")
    pretrain = spec(path, DatasetFormat.PRETRAIN_TEXT)

    with pytest.raises(InvalidDataset) as caught:
        validate_dataset(pretrain)
    assert caught.value.problems == ["line 3: not UTF-8 text (byte 7 of the line cannot be read)"]
    assert problem(pretrain, DatasetLimits(max_record_bytes=50)).problems == [
        "line 4: longer than 50 bytes, the most one record may take"
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_detection_reads_only_the_first_record(tmp_path: Path, suffix: str) -> None:
    first = json.dumps(alpaca(1))
    path = tmp_path / f"data{suffix}"
    # Whatever follows the first record is not read: not JSON, not UTF-8.
    start = f"[{first}," if suffix == ".json" else f"{first}\n"
    path.write_bytes(start.encode() + b"\xff{{{ not json" * 100_000)

    assert detect_dataset(path).format is DatasetFormat.ALPACA
    with pytest.raises(DatasetTooLarge) as caught:
        detect_dataset(path, limits=DatasetLimits(max_record_bytes=len(first) - 1))
    assert caught.value.limit == "max_record_bytes"


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_detection_gives_up_after_a_bounded_lead_of_blank_space(
    tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"data{suffix}"
    lead = "\n" * (DETECT_LEAD_BYTES + 10)
    body = json.dumps([alpaca(1)]) if suffix == ".json" else json.dumps(alpaca(1))
    path.write_text(lead + body, encoding="utf-8")

    with pytest.raises(InvalidDataset) as caught:
        detect_dataset(path)

    assert caught.value.problems == [
        f"no record starts in the first {DETECT_LEAD_BYTES} bytes of the file"
    ]
    # Validation reads on: blank space costs nothing to hold.
    assert validate_dataset(spec(path)) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_memory_stays_bounded_whatever_the_files_size(tmp_path: Path, suffix: str) -> None:
    records = [alpaca(i, "é" + "x" * 2000) for i in range(12_000)]  # about 25 MB
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    else:
        write_jsonl(path, records)
    del records
    size = path.stat().st_size
    assert size > 20_000_000

    tracemalloc.start()
    try:
        detected = detect_dataset(path, limits=DatasetLimits(max_record_bytes=1 << 20))
        count = validate_dataset(detected, DatasetLimits(max_records=20_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 12_000
    # A few reads of the file's chunks at most; the whole file would be 25 MB as bytes and
    # several times that parsed.
    assert peak < 4_000_000 < size // 5
