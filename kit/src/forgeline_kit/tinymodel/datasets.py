"""The demo datasets shipped with the kit, and how LLaMA-Factory should read each of them.

Each dataset comes in one of the formats the LLaMA-Factory documentation teaches (alpaca SFT,
sharegpt multi-turn with a system prompt and tool turns, alpaca preference pairs, plain
pre-training text). :class:`DatasetInfoEntry` is one entry of LLaMA-Factory's
``dataset_info.json``, typed, so that whoever writes that file (a test, the trainer) builds it
from a model rather than by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

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


class DatasetColumns(BaseModel):
    """Which record field holds what (LLaMA-Factory's ``columns``); unset means its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = None
    query: str | None = None
    response: str | None = None
    history: str | None = None
    messages: str | None = None
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


class DatasetTags(BaseModel):
    """How sharegpt messages name their roles (LLaMA-Factory's ``tags``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None


class DatasetInfoEntry(BaseModel):
    """One local-file entry of LLaMA-Factory's ``dataset_info.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file_name: str
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str | None = None
    folder: str | None = None
    num_samples: int | None = Field(None, ge=1)
    columns: DatasetColumns | None = None
    tags: DatasetTags | None = None


class DatasetInfo(RootModel[dict[str, DatasetInfoEntry]]):
    """A whole ``dataset_info.json``: dataset name to entry."""

    def to_json(self) -> str:
        """The file's text, leaving out every unset field so LLaMA-Factory's defaults apply."""
        return self.model_dump_json(exclude_none=True, indent=2) + "\n"


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
