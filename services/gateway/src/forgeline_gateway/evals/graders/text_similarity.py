"""OpenAI's ``text_similarity`` grader: how close the rendered `input` is to the rendered
`reference`, from 0 to 1, by one `evaluation_metric`; a row passes when the score reaches
`pass_threshold`.

Every figure comes from a scoring library, computed on one pair of texts:

* ``fuzzy_match``: rapidfuzz's ``fuzz.ratio`` (normalised Indel similarity) / 100.
* ``bleu``: NLTK's ``sentence_bleu`` (BLEU-4, uniform weights) with ``SmoothingFunction().method3``;
  ``gleu``: NLTK's ``sentence_gleu`` (1- to 4-grams); ``meteor``: NLTK's ``meteor_score``.
* ``rouge_1`` … ``rouge_5``, ``rouge_l``: rouge-score's F-measure of ROUGE-N / ROUGE-L.

Tokens, for English and other text written with spaces: rouge-score's own tokenizer for ROUGE
(lower case, letters and digits); NLTK's word tokenizer (``NLTKWordTokenizer``, which needs no
downloaded data) for BLEU, GLEU and METEOR.

Chinese (either text has a Han character) is scored as LLaMA-Factory scores its predictions
(``llamafactory/train/sft/metric.py``, ``ComputeSimilarity``): ROUGE over jieba's words (blanks
dropped), BLEU-4 over single characters with NLTK's ``sentence_bleu`` and smoothing ``method3``.
GLEU takes the same characters as BLEU and METEOR jieba's words. LLaMA-Factory reports them
times 100; here scores stay between 0 and 1, as OpenAI's do.

``meteor`` needs WordNet (NLTK's ``wordnet`` corpus), which no package on PyPI ships and NLTK
downloads at run time: where it is not installed (`wordnet_available`), a criterion using it is
refused when the eval is created. ``cosine`` needs an embedding model and is refused too.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import Field

from forgeline_gateway.evals.graders.base import Comparison, ComparisonSpec, Grade, parse_spec
from forgeline_kit.errors import InvalidArgument
from forgeline_kit.graders import TEXT_SIMILARITY_METRICS, TextSimilarityMetric

__all__ = [
    "METRICS",
    "TYPE",
    "TextSimilarity",
    "TextSimilaritySpec",
    "is_chinese",
    "similarity",
    "wordnet_available",
]

TYPE = "text_similarity"

#: The metrics scored here (OpenAI's, less ``cosine``).
METRICS: Final = TEXT_SIMILARITY_METRICS

# CJK Unified Ideographs, Extension A, Compatibility Ideographs, and the supplementary planes'.
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")

_WORDNET_MISSING = (
    "The 'meteor' metric needs WordNet (NLTK's 'wordnet' corpus), which is not installed on "
    "this gateway: no Python package ships it (NLTK downloads it at run time, and this gateway "
    "downloads nothing while it serves). An operator can install it where the internet is "
    "reachable with `python -m nltk.downloader -d <dir> wordnet` and point NLTK_DATA at <dir>. "
    "Use another metric: {others}."
)


class TextSimilaritySpec(ComparisonSpec):
    """A ``text_similarity`` testing criterion as stored and echoed."""

    type: Literal["text_similarity"]
    evaluation_metric: TextSimilarityMetric
    pass_threshold: float = Field(allow_inf_nan=False)


@dataclass(frozen=True)
class TextSimilarity(Comparison):
    """A ``text_similarity`` grader."""

    metric: str
    pass_threshold: float
    type: str = TYPE

    @classmethod
    def of(cls, spec: Mapping[str, Any], *, param: str) -> TextSimilarity:
        """The grader of a ``text_similarity`` criterion.

        Raises:
            InvalidArgument: a missing or bad field, a bad template, ``cosine``, or ``meteor``
                without WordNet; names the field under `param`.
        """
        if spec.get("evaluation_metric") == "cosine":
            raise InvalidArgument(
                "The 'cosine' metric compares embeddings and is not supported by this gateway's "
                f"graders; use one of {', '.join(METRICS)}.",
                field=f"{param}.evaluation_metric",
            )
        checked = parse_spec(TextSimilaritySpec, spec, param=param)
        if checked.evaluation_metric == "meteor" and not wordnet_available():
            others = ", ".join(m for m in METRICS if m != "meteor")
            raise InvalidArgument(
                _WORDNET_MISSING.format(others=others), field=f"{param}.evaluation_metric"
            )
        return cls(
            *cls.parts(checked, param=param),
            metric=checked.evaluation_metric,
            pass_threshold=checked.pass_threshold,
        )

    def grade(self, namespaces: Mapping[str, Any]) -> Grade:
        score = similarity(
            self.metric, self.input.render(namespaces), self.reference.render(namespaces)
        )
        return Grade(self.name, self.type, score, score >= self.pass_threshold)


def is_chinese(*texts: str) -> bool:
    """Whether any of `texts` has a Han character (then LLaMA-Factory's Chinese scoring applies)."""
    return any(_HAN.search(text) for text in texts)


def similarity(metric: str, hypothesis: str, reference: str) -> float:
    """The `metric` score of `hypothesis` against `reference`, from 0 to 1.

    Raises:
        ValueError: an unknown metric.
    """
    scorer = _SCORERS.get(metric)
    if scorer is None:
        raise ValueError(f"unknown metric {metric!r}")
    return float(scorer(hypothesis, reference, is_chinese(hypothesis, reference)))


@functools.cache
def wordnet_available() -> bool:
    """Whether NLTK finds its WordNet corpus (``meteor`` needs it)."""
    import nltk  # type: ignore[import-untyped]

    for resource in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(resource)
        except LookupError:
            continue
        return True
    return False


# --- tokens ---------------------------------------------------------------------------------


@functools.cache
def _jieba() -> Any:
    import jieba  # type: ignore[import-untyped]

    jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at DEBUG to stderr
    return jieba


def jieba_words(text: str) -> list[str]:
    """jieba's segmentation of `text`, blanks dropped (LLaMA-Factory joins the words with spaces
    and its ROUGE splits on them, which drops them too)."""
    return [word for word in _jieba().cut(text) if word.strip()]


@functools.cache
def _word_tokenizer() -> Callable[[str], list[str]]:
    from nltk.tokenize import NLTKWordTokenizer  # type: ignore[import-untyped]

    tokenize: Callable[[str], list[str]] = NLTKWordTokenizer().tokenize
    return tokenize


def _bleu_tokens(text: str, chinese: bool) -> list[str]:
    # LLaMA-Factory's BLEU-4 takes the characters of the text (`list(text)`), blanks included.
    return list(text) if chinese else _word_tokenizer()(text)


class _JiebaTokenizer:
    """rouge-score's tokenizer interface over jieba (its own keeps only ASCII letters/digits)."""

    def tokenize(self, text: str) -> list[str]:
        return jieba_words(text)


# --- metrics --------------------------------------------------------------------------------


def _fuzzy(hypothesis: str, reference: str, chinese: bool) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(hypothesis, reference)) / 100.0


def _bleu(hypothesis: str, reference: str, chinese: bool) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # type: ignore[import-untyped]

    hyp, ref = _bleu_tokens(hypothesis, chinese), _bleu_tokens(reference, chinese)
    if not hyp or not ref:
        return 0.0
    return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3))


def _gleu(hypothesis: str, reference: str, chinese: bool) -> float:
    from nltk.translate.gleu_score import sentence_gleu  # type: ignore[import-untyped]

    hyp, ref = _bleu_tokens(hypothesis, chinese), _bleu_tokens(reference, chinese)
    if not hyp or not ref:
        return 0.0
    return float(sentence_gleu([ref], hyp))


def _meteor(hypothesis: str, reference: str, chinese: bool) -> float:
    from nltk.translate.meteor_score import meteor_score  # type: ignore[import-untyped]

    if chinese:
        hyp, ref = jieba_words(hypothesis), jieba_words(reference)
    else:
        hyp, ref = _word_tokenizer()(hypothesis), _word_tokenizer()(reference)
    if not hyp or not ref:
        return 0.0
    return float(meteor_score([ref], hyp))


@functools.cache
def _rouge_scorer(kind: str, chinese: bool) -> Any:
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    return rouge_scorer.RougeScorer([kind], tokenizer=_JiebaTokenizer() if chinese else None)


def _rouge(kind: str) -> Callable[[str, str, bool], float]:
    def score(hypothesis: str, reference: str, chinese: bool) -> float:
        result = _rouge_scorer(kind, chinese).score(reference, hypothesis)[kind]
        return float(result.fmeasure)

    return score


_SCORERS: Final[dict[str, Callable[[str, str, bool], float]]] = {
    "fuzzy_match": _fuzzy,
    "bleu": _bleu,
    "gleu": _gleu,
    "meteor": _meteor,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}
