"""BLEU-4 and ROUGE-1/2/L of generated answers, computed as LLaMA-Factory computes them.

Per answer (src/llamafactory/train/sft/metric.py, ComputeSimilarity): ROUGE from rouge-chinese
on the jieba words of prediction and label (0 when either has no words), BLEU-4 from nltk's
sentence_bleu on the characters, with smoothing method3; each score x 100, rounded to 4 places;
the reported value is the mean over answers. Needs the `metrics` extra (nltk, jieba,
rouge-chinese).
"""

from __future__ import annotations

import logging

from lmforge.errors import UserError

KEYS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


def _libraries():
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as exc:
        raise UserError(
            f"BLEU and ROUGE need the `metrics` extra ({exc.name} is not installed)",
            fix="pip install 'lmforge[metrics]' (nltk, jieba, rouge-chinese)",
        ) from None
    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter
    return jieba, SmoothingFunction, sentence_bleu, Rouge


def answer_scores(prediction: str, label: str) -> dict[str, float]:
    """One answer's BLEU-4 and ROUGE-1/2/L F-scores, x 100 and rounded to 4 places."""
    jieba, SmoothingFunction, sentence_bleu, Rouge = _libraries()
    hypothesis = list(jieba.cut(prediction))
    reference = list(jieba.cut(label))
    if not " ".join(hypothesis).split() or not " ".join(reference).split():
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        scores = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        rouge = {key: value["f"] for key, value in scores.items()}
    bleu = sentence_bleu(
        [list(label)], list(prediction), smoothing_function=SmoothingFunction().method3
    )
    result = {key: round(value * 100, 4) for key, value in rouge.items()}
    result["bleu-4"] = round(float(bleu) * 100, 4)
    return {key: result[key] for key in KEYS}


def similarity(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """The mean of each score over the answers (an empty list scores nothing)."""
    if not predictions:
        return {}
    totals = dict.fromkeys(KEYS, 0.0)
    for prediction, label in zip(predictions, labels):
        for key, value in answer_scores(prediction, label).items():
            totals[key] += value
    return {key: totals[key] / len(predictions) for key in KEYS}
