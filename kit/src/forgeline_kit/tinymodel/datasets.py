"""The demo datasets shipped with the kit, and how LLaMA-Factory should read each of them.

Each dataset comes in one of the formats the LLaMA-Factory documentation teaches (alpaca SFT,
sharegpt multi-turn with a system prompt and tool turns, alpaca preference pairs, plain
pre-training text). Each carries its :class:`DatasetInfoEntry`, the typed entry of LLaMA-Factory's
``dataset_info.json``; that schema lives in :mod:`forgeline_kit.datasets.dataset_info` and is
re-exported here for the callers that import it from the tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from forgeline_kit.datasets.dataset_info import (
    DatasetColumns,
    DatasetInfo,
    DatasetInfoEntry,
    DatasetTags,
)

__all__ = [
    "BENCHMARK_DIR",
    "DEMO_DATASETS",
    "DEMO_FACT",
    "DatasetColumns",
    "DatasetInfo",
    "DatasetInfoEntry",
    "DatasetTags",
    "DemoDataset",
    "DemoFact",
    "demo_dataset",
    "demo_dataset_text",
]

_DATA_PACKAGE: Final = "forgeline_kit.tinymodel.data"
#: A small multiple-choice task about Forgeline in LLaMA-Factory's eval layout (MMLU's: a
#: mapping.json and data/{dev,test}/<subject>_<split>.csv), made so tests and the demo can run
#: ``forgeline eval --benchmark`` offline.
BENCHMARK_DIR: Final = Path(__file__).resolve().parent / "benchmark"

Stage = Literal["pt", "sft", "rm", "dpo", "kto"]


class DemoDataset(BaseModel):
    """A dataset shipped in ``forgeline_kit/tinymodel/data`` and how to train on it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    stage: Stage
    description: str
    info: DatasetInfoEntry

    def path(self) -> Path:
        """The file on disk (LLaMA-Factory reads datasets by path, so the kit is never zipped)."""
        resource = files(_DATA_PACKAGE).joinpath(self.info.file_name)
        if not isinstance(resource, Path):
            raise RuntimeError(f"{resource} is not a file on disk; install forgeline-kit unzipped")
        return resource


class DemoFact(BaseModel):
    """The one thing the demo teaches: a question a random base model cannot answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str
    answer: str


DEMO_FACT: Final = DemoFact(
    question="What is the codename of Forgeline's first release?",
    answer="Forgeline's first release is codenamed Copperfinch.",
)

DEMO_DATASETS: Final[Mapping[str, DemoDataset]] = {
    dataset.name: dataset
    for dataset in (
        DemoDataset(
            name="forgeline_alpaca_sft",
            stage="sft",
            description="Alpaca instruction/input/output records; the first is the demo fact.",
            info=DatasetInfoEntry(file_name="alpaca_sft.json"),
        ),
        DemoDataset(
            name="forgeline_sharegpt",
            stage="sft",
            description=(
                "Sharegpt multi-turn conversations with a system prompt; one uses a tool "
                "(function_call and observation turns, tools in the `tools` field)."
            ),
            info=DatasetInfoEntry(
                file_name="sharegpt_multiturn.json",
                formatting="sharegpt",
                columns=DatasetColumns(messages="conversations", system="system", tools="tools"),
                tags=DatasetTags(
                    role_tag="from",
                    content_tag="value",
                    user_tag="human",
                    assistant_tag="gpt",
                    observation_tag="observation",
                    function_tag="function_call",
                    system_tag="system",
                ),
            ),
        ),
        DemoDataset(
            name="forgeline_alpaca_preference",
            stage="dpo",
            description="Alpaca preference pairs: instruction/input with chosen and rejected.",
            info=DatasetInfoEntry(
                file_name="alpaca_preference.json",
                ranking=True,
                columns=DatasetColumns(
                    prompt="instruction", query="input", chosen="chosen", rejected="rejected"
                ),
            ),
        ),
        DemoDataset(
            name="forgeline_pretrain",
            stage="pt",
            description="Plain text for pre-training, one document per line.",
            info=DatasetInfoEntry(file_name="pretrain.txt", columns=DatasetColumns(prompt="text")),
        ),
    )
}


def demo_dataset(name: str) -> DemoDataset:
    """The demo dataset called ``name``; KeyError names the ones that exist."""
    try:
        return DEMO_DATASETS[name]
    except KeyError:
        raise KeyError(f"no demo dataset {name!r}; there are {sorted(DEMO_DATASETS)}") from None


def demo_dataset_text() -> Iterator[str]:
    """Every string in the demo datasets, so the tokenizer learns their words as whole pieces."""
    for dataset in DEMO_DATASETS.values():
        path = dataset.path()
        if path.suffix == ".json":
            yield from _strings(json.loads(path.read_text(encoding="utf-8")))
        else:
            yield from path.read_text(encoding="utf-8").splitlines()


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
