"""A SentencePiece BPE tokenizer trained deterministically on the embedded corpus.

SentencePiece rather than a `tokenizers` BPE because llama.cpp's ``convert_hf_to_gguf.py`` reads
``tokenizer.model`` directly, while it rejects a custom BPE whose pre-tokenizer hash it does not
know. Normalisation is switched off (identity rules, no dummy prefix, whitespace kept) so that
SentencePiece, transformers' Metaspace tokenizer and llama.cpp split any text the same way; the
ChatML markers are control symbols, which llama.cpp turns into CONTROL tokens even when a later
``save_pretrained`` drops ``added_tokens_decoder`` from ``tokenizer_config.json``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Final

import sentencepiece as spm
from pydantic import BaseModel, ConfigDict

from .datasets import demo_dataset_text
from .spec import (
    BOS_TOKEN,
    CHATML_TEMPLATE,
    EOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
    TinyModelSpec,
)

__all__ = [
    "AddedToken",
    "TokenizerConfig",
    "corpus_sentences",
    "tokenizer_config",
    "train_sentencepiece",
    "write_tokenizer",
]

TOKENIZER_MODEL: Final = "tokenizer.model"
TOKENIZER_CONFIG: Final = "tokenizer_config.json"


class AddedToken(BaseModel):
    """One entry of ``added_tokens_decoder`` in ``tokenizer_config.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    content: str
    lstrip: bool = False
    normalized: bool = False
    rstrip: bool = False
    single_word: bool = False
    special: bool = True


class TokenizerConfig(BaseModel):
    """The subset of transformers' ``tokenizer_config.json`` the tiny model sets.

    ``add_bos_token: false`` matters beyond transformers: llama.cpp prepends BOS to every prompt
    of a SentencePiece vocabulary unless the GGUF says otherwise, and LLaMA-Factory's ChatML
    training never sees a BOS. ``add_prefix_space: false`` likewise becomes the GGUF's
    ``add_space_prefix``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokenizer_class: str = "LlamaTokenizer"
    bos_token: str = BOS_TOKEN
    eos_token: str = IM_END
    unk_token: str = UNK_TOKEN
    pad_token: str = PAD_TOKEN
    add_bos_token: bool = False
    add_eos_token: bool = False
    add_prefix_space: bool = False
    legacy: bool = False
    clean_up_tokenization_spaces: bool = False
    model_max_length: int
    chat_template: str = CHATML_TEMPLATE
    additional_special_tokens: tuple[str, ...] = (IM_START, IM_END)
    added_tokens_decoder: dict[str, AddedToken]


def corpus_sentences() -> Iterator[str]:
    """The tokenizer's training text: the embedded corpus, then every demo dataset string."""
    corpus = files("forgeline_kit.tinymodel.data").joinpath("tokenizer_corpus.txt")
    lines = [*corpus.read_text(encoding="utf-8").splitlines(), *demo_dataset_text()]
    return (line for line in lines if line.strip())


def train_sentencepiece(spec: TinyModelSpec, sentences: Iterable[str]) -> bytes:
    """Train the BPE model and return the bytes of ``tokenizer.model``.

    Same spec and sentences give the same bytes: one thread, no sampling or shuffling, and the
    sentences come from an iterator so no input file path is recorded in the model.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=spec.vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        unk_id=SPECIAL_TOKENS.index(UNK_TOKEN),
        bos_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_id=SPECIAL_TOKENS.index(EOS_TOKEN),
        pad_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        unk_piece=UNK_TOKEN,
        bos_piece=BOS_TOKEN,
        eos_piece=EOS_TOKEN,
        pad_piece=PAD_TOKEN,
        control_symbols=[IM_START, IM_END],
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def tokenizer_config(spec: TinyModelSpec) -> TokenizerConfig:
    """The ``tokenizer_config.json`` that goes with :func:`train_sentencepiece`'s model."""
    return TokenizerConfig(
        model_max_length=spec.max_position_embeddings,
        added_tokens_decoder={
            str(token_id): AddedToken(content=token)
            for token_id, token in enumerate(SPECIAL_TOKENS)
        },
    )


def write_tokenizer(out_dir: Path, spec: TinyModelSpec) -> None:
    """Write ``tokenizer.model`` and ``tokenizer_config.json`` into ``out_dir``."""
    model = train_sentencepiece(spec, corpus_sentences())
    _check_special_ids(model)
    (out_dir / TOKENIZER_MODEL).write_bytes(model)
    config = tokenizer_config(spec).model_dump_json(indent=2)
    (out_dir / TOKENIZER_CONFIG).write_text(config + "\n", encoding="utf-8")


def _check_special_ids(model: bytes) -> None:
    processor = spm.SentencePieceProcessor(model_proto=model)
    pieces = [processor.id_to_piece(token_id) for token_id in range(len(SPECIAL_TOKENS))]
    if tuple(pieces) != SPECIAL_TOKENS:
        raise RuntimeError(f"special tokens landed at unexpected ids: {pieces}")
