"""The graders Forgeline scores answers with, by name: the gateway's Evals API criteria and
fine-tuning evaluations take them, and the CLI offers them (``forgeline eval --grader``). One
list, so that a client never offers a name the gateway refuses, nor misses one it takes."""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ["GRADER_NAMES", "TEXT_SIMILARITY_METRICS", "GraderName", "TextSimilarityMetric"]

#: The ``text_similarity`` metrics the gateway scores: OpenAI's, less ``cosine`` (it compares
#: embeddings, which the gateway's graders do not have).
TextSimilarityMetric = Literal[
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
]

#: A grader by one name: ``exact`` (``string_check`` equality) or a `TextSimilarityMetric`.
GraderName = Literal["exact", TextSimilarityMetric]

TEXT_SIMILARITY_METRICS: Final[tuple[str, ...]] = get_args(TextSimilarityMetric)
GRADER_NAMES: Final[tuple[str, ...]] = get_args(GraderName)
