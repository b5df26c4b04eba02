"""BLEU-4 and ROUGE of generated answers, as LLaMA-Factory computes them: values worked out by
hand, and the same settings called on nltk and rouge-chinese directly."""

from __future__ import annotations

import pytest

from lmforge.evaluate.metrics import answer_scores, similarity

pytest.importorskip("nltk")
pytest.importorskip("jieba")
pytest.importorskip("rouge_chinese")


def test_hand_computed_english():
    # ROUGE on words a b c d vs a b e f: 2 of 4 unigrams, 1 of 3 bigrams, LCS "a b" (2 of 4).
    # BLEU on characters (7 each, no brevity penalty): n-gram precisions 5/7, 3/6, 2/5, 1/4,
    # so BLEU = (5/7 * 3/6 * 2/5 * 1/4) ** (1/4) = 28 ** -0.25 = 0.434721...
    assert answer_scores("a b c d", "a b e f") == {
        "bleu-4": 43.4721,
        "rouge-1": 50.0,
        "rouge-2": 33.3333,
        "rouge-l": 50.0,
    }
    assert 28**-0.25 == pytest.approx(0.434721, abs=1e-6)


def test_hand_computed_chinese_on_jieba_words_and_characters():
    # jieba: 我/爱/北京/天安门 vs 我/爱/北京: ROUGE-1 P 3/4 R 1 -> 6/7; ROUGE-2 P 2/3 R 1 -> 4/5.
    # BLEU on characters: precisions 4/7, 3/6, 2/5, 1/4 (longer than the label: no penalty).
    scores = answer_scores("我爱北京天安门", "我爱北京")
    assert scores == {
        "bleu-4": round(100 * 35**-0.25, 4),
        "rouge-1": round(100 * 6 / 7, 4),
        "rouge-2": 80.0,
        "rouge-l": round(100 * 6 / 7, 4),
    }


def test_identical_empty_and_the_libraries_directly():
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    assert answer_scores("the cat sat", "the cat sat") == dict.fromkeys(
        ("bleu-4", "rouge-1", "rouge-2", "rouge-l"), 100.0
    )
    assert answer_scores("", "abc") == dict.fromkeys(
        ("bleu-4", "rouge-1", "rouge-2", "rouge-l"), 0.0
    )
    pred, label = "abc", "abd"  # no 4-gram in common: smoothing method3 decides BLEU
    bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    rouge = Rouge().get_scores(" ".join(jieba.cut(pred)), " ".join(jieba.cut(label)))[0]
    assert answer_scores(pred, label) == {
        "bleu-4": round(bleu * 100, 4),
        "rouge-1": round(rouge["rouge-1"]["f"] * 100, 4),
        "rouge-2": round(rouge["rouge-2"]["f"] * 100, 4),
        "rouge-l": round(rouge["rouge-l"]["f"] * 100, 4),
    }
    assert 0 < bleu < 1


def test_mean_over_answers():
    scores = similarity(["a b c d", "the cat sat"], ["a b e f", "the cat sat"])
    assert scores == {
        "bleu-4": pytest.approx((43.4721 + 100) / 2),
        "rouge-1": pytest.approx(75.0),
        "rouge-2": pytest.approx((33.3333 + 100) / 2),
        "rouge-l": pytest.approx(75.0),
    }
    assert similarity([], []) == {}
