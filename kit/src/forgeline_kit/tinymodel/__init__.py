"""The tiny test model and the demo datasets.

``write_tiny_model(out_dir, seed=...)`` writes a randomly initialised Llama model (hidden 256,
intermediate 512, two layers) with a SentencePiece BPE tokenizer and a ChatML chat template
(tools and tool calls in the Hermes 2 Pro format llama.cpp parses), deterministically and
offline. It is small enough for LLaMA-Factory to fine-tune on a CPU in
seconds, and shaped so llama.cpp converts it to GGUF and k-quantizes it. Train it with
LLaMA-Factory's ``template: chatml`` (:data:`LLAMAFACTORY_TEMPLATE`).

The demo datasets (:data:`DEMO_DATASETS`) ship as package data, each with its LLaMA-Factory
``dataset_info.json`` entry; :data:`DEMO_FACT` is what the demo teaches.

Needs the kit's ``tinymodel`` extra (torch, transformers, sentencepiece, safetensors); the
datasets alone need nothing extra.
"""

from .datasets import (
    BENCHMARK_DIR,
    DEMO_DATASETS,
    DEMO_FACT,
    DatasetColumns,
    DatasetInfo,
    DatasetInfoEntry,
    DatasetTags,
    DemoDataset,
    DemoFact,
    demo_dataset,
)
from .factory import TinyModel, write_tiny_model
from .spec import (
    CHATML_TEMPLATE,
    DEFAULT_SEED,
    IM_END,
    IM_START,
    LLAMAFACTORY_TEMPLATE,
    TinyModelSpec,
)

__all__ = [
    "BENCHMARK_DIR",
    "CHATML_TEMPLATE",
    "DEFAULT_SEED",
    "DEMO_DATASETS",
    "DEMO_FACT",
    "IM_END",
    "IM_START",
    "LLAMAFACTORY_TEMPLATE",
    "DatasetColumns",
    "DatasetInfo",
    "DatasetInfoEntry",
    "DatasetTags",
    "DemoDataset",
    "DemoFact",
    "TinyModel",
    "TinyModelSpec",
    "demo_dataset",
    "write_tiny_model",
]
