"""ROUGE-1/2/L and BLEU-4 of generated texts against their references, per sample (x100, rounded to 4 decimals, as
ChatGLM2's ADGEN evaluation does), then averaged; a sample whose *reference* holds a Han character is scored as ADGEN
(ptuning/main.py) does, any other as `evaluate`'s defaults do: SCORING says how, beside the scores."""
from __future__ import annotations

import functools
import re

from .errors import DataError

KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
SCORING = ("mean over samples of per-sample scores x100; Chinese references: ChatGLM2 ADGEN (jieba words, "
           "rouge-chinese F, NLTK sentence BLEU-4 on characters, smoothing method 3); other: rouge_score F1 "
           "(no stemmer), sacrebleu sentence BLEU (13a, exp smoothing)")
# CJK Unified Ideographs, Extension A and the compatibility block: enough to tell Chinese references apart.
HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@functools.cache  # built on first use: jieba's dictionary loads only when a Chinese reference comes
def _chinese_scorer():
    import logging

    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict ..." lines on every run
    rouge, smooth = Rouge(), SmoothingFunction().method3

    def score(pred: str, ref: str) -> list[float]:
        hyp, gold = " ".join(jieba.cut(pred)), " ".join(jieba.cut(ref))
        if hyp.split() and gold.split():  # rouge-chinese raises on empty text
            result = rouge.get_scores(hyp, gold)[0]
            values = [result[k]["f"] for k in KEYS[:3]]
        else:
            values = [0.0, 0.0, 0.0]
        # ADGEN scores BLEU on the raw characters (spaces and punctuation included), not on jieba's words.
        values.append(sentence_bleu([list(ref)], list(pred), smoothing_function=smooth))
        return [round(v * 100, 4) for v in values]

    return score


@functools.cache
def _other_scorer():
    import sacrebleu
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)

    def score(pred: str, ref: str) -> list[float]:
        if not pred.strip():
            return [0.0] * 4
        result = rouge.score(ref, pred)  # (target, prediction)
        values = [result[k].fmeasure * 100 for k in ("rouge1", "rouge2", "rougeL")]
        values.append(sacrebleu.sentence_bleu(pred, [ref]).score)  # already 0-100
        return [round(v, 4) for v in values]

    return score


def score_generations(predictions: list[str], references: list[str]) -> dict:
    """{"rouge-1", "rouge-2", "rouge-l", "bleu-4": mean over samples (0-100), "samples": n, "scoring": how}."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise DataError(f"scoring needs one prediction per reference: got {len(predictions)} predictions and "
                        f"{len(references)} references")
    if not predictions:
        raise DataError("scoring needs at least one prediction and reference; both lists are empty")
    for name, texts in (("predictions", predictions), ("references", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"{name}[{i}] must be a string, got {type(text).__name__}")
    rows = [(_chinese_scorer() if HAN.search(ref) else _other_scorer())(pred, ref)
            for pred, ref in zip(predictions, references)]
    means = {key: sum(column) / len(rows) for key, column in zip(KEYS, zip(*rows))}
    return {**means, "samples": len(rows), "scoring": SCORING}
