"""The graders and templates on their own: scores against values worked out by hand and against
the scoring libraries called directly, Chinese scored as LLaMA-Factory scores it."""

from __future__ import annotations

import math
from typing import Any

import jieba  # type: ignore[import-untyped]
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # type: ignore[import-untyped]
from nltk.translate.gleu_score import sentence_gleu  # type: ignore[import-untyped]
from rapidfuzz import fuzz
from rouge_score import rouge_scorer  # type: ignore[import-untyped]

from forgeline_gateway.evals.graders import build_grader, build_graders
from forgeline_gateway.evals.graders.text_similarity import (
    is_chinese,
    jieba_words,
    similarity,
    wordnet_available,
)
from forgeline_gateway.evals.templates import MissingVariable, Template
from forgeline_kit.errors import InvalidArgument

REFERENCE = "the cat sat on the mat"
HYPOTHESIS = "the cat is on the mat"


def grade(spec: dict[str, Any], item: dict[str, Any], sample: dict[str, Any]) -> Any:
    return build_grader(spec, param="testing_criteria[0]").grade({"item": item, "sample": sample})


def test_rouge_on_a_known_pair_matches_the_hand_computed_values() -> None:
    # Six words each, five shared unigrams ("the" twice): P = R = 5/6.
    assert similarity("rouge_1", HYPOTHESIS, REFERENCE) == pytest.approx(5 / 6)
    # Bigrams of the hypothesis: the-cat, cat-is, is-on, on-the, the-mat; of the reference:
    # the-cat, cat-sat, sat-on, on-the, the-mat. Three shared of five: F = 3/5.
    assert similarity("rouge_2", HYPOTHESIS, REFERENCE) == pytest.approx(3 / 5)
    # Longest common subsequence: the cat on the mat (5 of 6).
    assert similarity("rouge_l", HYPOTHESIS, REFERENCE) == pytest.approx(5 / 6)
    # Trigrams: the-cat-is, cat-is-on, is-on-the, on-the-mat vs the-cat-sat, cat-sat-on,
    # sat-on-the, on-the-mat: one of four.
    assert similarity("rouge_3", HYPOTHESIS, REFERENCE) == pytest.approx(1 / 4)
    assert similarity("rouge_4", HYPOTHESIS, REFERENCE) == 0.0
    assert similarity("rouge_5", HYPOTHESIS, REFERENCE) == 0.0


def test_bleu_on_a_known_pair_matches_the_hand_computed_value() -> None:
    # Modified precisions of 1- to 4-grams: 5/6, 3/5, 1/4, 0/3; no brevity penalty (same
    # length). NLTK's method3 replaces the k-th zero precision by 1/(2^k * count): 1/(2 * 3).
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(1 / 6)) / 4)

    assert similarity("bleu", HYPOTHESIS, REFERENCE) == pytest.approx(expected)
    assert similarity("bleu", REFERENCE, REFERENCE) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("hypothesis", "reference"),
    [
        (HYPOTHESIS, REFERENCE),
        ("Forgeline serves this answer", "Forgeline serves the answer, one word at a time."),
        ("Paris is the capital of France.", "The capital of France is Paris."),
    ],
)
def test_english_scores_are_the_libraries_own(hypothesis: str, reference: str) -> None:
    words = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rouge = words.score(reference, hypothesis)
    hyp_tokens, ref_tokens = _nltk_words(hypothesis), _nltk_words(reference)

    assert similarity("rouge_1", hypothesis, reference) == pytest.approx(rouge["rouge1"].fmeasure)
    assert similarity("rouge_2", hypothesis, reference) == pytest.approx(rouge["rouge2"].fmeasure)
    assert similarity("rouge_l", hypothesis, reference) == pytest.approx(rouge["rougeL"].fmeasure)
    assert similarity("bleu", hypothesis, reference) == pytest.approx(
        sentence_bleu([ref_tokens], hyp_tokens, smoothing_function=SmoothingFunction().method3)
    )
    assert similarity("gleu", hypothesis, reference) == pytest.approx(
        sentence_gleu([ref_tokens], hyp_tokens)
    )
    assert similarity("fuzzy_match", hypothesis, reference) == pytest.approx(
        fuzz.ratio(hypothesis, reference) / 100
    )


def _nltk_words(text: str) -> list[str]:
    from nltk.tokenize import NLTKWordTokenizer  # type: ignore[import-untyped]

    tokens: list[str] = NLTKWordTokenizer().tokenize(text)
    return tokens


def test_chinese_rouge_is_over_jiebas_words() -> None:
    hypothesis, reference = "我爱北京天安门", "我爱北京"
    # jieba's segmentation, as LLaMA-Factory's ComputeSimilarity takes it.
    assert list(jieba.cut(hypothesis)) == ["我", "爱", "北京", "天安门"]
    assert list(jieba.cut(reference)) == ["我", "爱", "北京"]
    assert jieba_words(hypothesis) == ["我", "爱", "北京", "天安门"]

    # By hand: three shared words; P = 3/4, R = 3/3, F = 2PR/(P+R) = 6/7.
    assert similarity("rouge_1", hypothesis, reference) == pytest.approx(6 / 7)
    # Bigrams 我-爱, 爱-北京, 北京-天安门 vs 我-爱, 爱-北京: P = 2/3, R = 1, F = 4/5.
    assert similarity("rouge_2", hypothesis, reference) == pytest.approx(4 / 5)
    assert similarity("rouge_l", hypothesis, reference) == pytest.approx(6 / 7)
    # rouge-score's own tokenizer keeps only ASCII letters and digits: it would score nothing.
    assert rouge_scorer.RougeScorer(["rouge1"]).score(reference, hypothesis)["rouge1"].fmeasure == 0


def test_chinese_bleu_is_over_characters_as_llamafactory_scores_it() -> None:
    hypothesis, reference = "今天天气很好。", "今天天气不错。"
    expected = sentence_bleu(
        [list(reference)], list(hypothesis), smoothing_function=SmoothingFunction().method3
    )

    assert is_chinese(hypothesis, reference)
    assert similarity("bleu", hypothesis, reference) == pytest.approx(expected)
    # By hand: characters 今天天气很好。 vs 今天天气不错。 share 今 天 天 气 。 (5/7), bigrams
    # 今天 天天 天气 (3/6), trigrams 今天天 天天气 (2/5), 4-grams 今天天气 (1/4).
    by_hand = math.exp((math.log(5 / 7) + math.log(3 / 6) + math.log(2 / 5) + math.log(1 / 4)) / 4)
    assert expected == pytest.approx(by_hand)


def test_mixed_text_with_han_characters_is_scored_as_chinese() -> None:
    assert is_chinese("模型 answer", "answer")
    assert not is_chinese("answer", "réponse")


@pytest.mark.parametrize(
    ("operation", "given", "expected", "passed"),
    [
        ("eq", "Paris", "Paris", True),
        ("eq", "paris", "Paris", False),
        ("ne", "Lyon", "Paris", True),
        ("like", "It is Paris.", "Paris", True),
        ("like", "It is paris.", "Paris", False),
        ("ilike", "It is PARIS.", "paris", True),
        ("ilike", "Lyon", "paris", False),
    ],
)
def test_string_check_operations(operation: str, given: str, expected: str, passed: bool) -> None:
    spec = {
        "type": "string_check",
        "name": "check",
        "input": "{{ sample.output_text }}",
        "reference": "{{item.answer}}",
        "operation": operation,
    }

    result = grade(spec, {"answer": expected}, {"output_text": given})

    assert (result.score, result.passed) == (1.0 if passed else 0.0, passed)


def test_text_similarity_passes_at_its_threshold() -> None:
    spec = {
        "type": "text_similarity",
        "name": "overlap",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "rouge_1",
        "pass_threshold": 5 / 6,
    }

    result = grade(spec, {"answer": REFERENCE}, {"output_text": HYPOTHESIS})

    assert result.score == pytest.approx(5 / 6)
    assert result.passed


def test_templates_render_nested_paths_and_json_values() -> None:
    template = Template.parse(
        "{{item.turns[1].text}} / {{ item.turns.0.text }} / {{item.n}} / {{item.tags}}",
        param="p",
    )
    item = {"turns": [{"text": "a"}, {"text": "b"}], "n": 3, "tags": ["x", "y"]}

    assert template.render({"item": item}) == 'b / a / 3 / ["x", "y"]'
    with pytest.raises(MissingVariable, match="'item' has no 'missing'"):
        Template.parse("{{item.missing}}", param="p").render({"item": item})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ answer }}", "a reference starts with 'item' or 'sample'"),
        ("{{ item }}", "names a whole namespace"),
        ("{{ item.answer ", "never closed"),
        ("{{ items.answer }}", "starts with 'items'"),
    ],
)
def test_a_bad_template_names_its_param(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        Template.parse(text, param="testing_criteria[0].reference")

    assert caught.value.field == "testing_criteria[0].reference"


def test_unsupported_graders_and_metrics_are_refused_by_name() -> None:
    base = {"name": "g", "input": "{{sample.output_text}}", "reference": "{{item.a}}"}

    with pytest.raises(InvalidArgument, match="Supported graders: string_check, text_similarity"):
        build_grader({**base, "type": "python", "source": "x"}, param="testing_criteria[0]")
    with pytest.raises(InvalidArgument, match="unknown grader 'regex'") as caught:
        build_grader({**base, "type": "regex"}, param="testing_criteria[1]")
    assert caught.value.field == "testing_criteria[1].type"
    with pytest.raises(InvalidArgument, match="'cosine' metric compares embeddings") as caught:
        build_grader(
            {**base, "type": "text_similarity", "evaluation_metric": "cosine", "pass_threshold": 1},
            param="testing_criteria[0]",
        )
    assert caught.value.field == "testing_criteria[0].evaluation_metric"
    with pytest.raises(InvalidArgument, match="'fuzzy_match', 'bleu'"):
        build_grader(
            {**base, "type": "text_similarity", "evaluation_metric": "wer", "pass_threshold": 1},
            param="testing_criteria[0]",
        )
    twice = {**base, "type": "string_check", "operation": "eq"}
    with pytest.raises(InvalidArgument, match="Two testing criteria are named 'g'"):
        build_graders([twice, twice], param="testing_criteria")


@pytest.mark.skipif(wordnet_available(), reason="WordNet is installed here")
def test_meteor_without_wordnet_is_refused_saying_why() -> None:
    spec = {
        "type": "text_similarity",
        "name": "meteor",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "meteor",
        "pass_threshold": 0.5,
    }

    with pytest.raises(InvalidArgument, match="needs WordNet") as caught:
        build_grader(spec, param="testing_criteria[2]")

    assert caught.value.field == "testing_criteria[2].evaluation_metric"
    assert "nltk.downloader" in caught.value.message
