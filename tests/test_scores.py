"""tunekit.scores against values computed by hand here: worked arithmetic for very short lines, and small independent
implementations (n-gram overlaps -> ROUGE-N F, LCS -> ROUGE-L F, clipped n-gram precisions with the brevity penalty
and the smoothing -> BLEU-4) for the fixture below.  The fixture was written for this repository (ADGEN-like product
lines in Chinese, and English ones).  Nothing here touches the network."""
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tunekit.errors import DataError
from tunekit.scores import score_generations

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")

# (prediction, reference)
ZH = [
    ("这款连衣裙采用简约的圆领设计，显得大方优雅。", "这款连衣裙采用简约的圆领设计，显得大方优雅。"),  # identical
    ("简约的设计", "简约大方的设计"),  # short, worked by hand below
    ("这款衬衫采用雪纺面料，简约又舒适，简约百搭。", "这款衬衫采用纯棉面料，穿着舒适透气。"),  # repeats 简约 and ，
    ("裤子很宽大", "宽松的版型，遮肉显瘦。"),  # no word in common, one character (宽)
    ("", "宽松的版型，遮肉显瘦。"),  # empty prediction
]
EN = [
    ("This dress has a round neck and a simple cut.", "This dress has a round neck and a simple cut."),
    ("soft cotton dress", "soft cotton shirt"),  # short, worked by hand below
    ("A cotton shirt that keeps you warm in winter, a light choice.",
     "A light cotton shirt that keeps you cool in summer."),
    ("soft fabric", "Soft fabrics."),  # case and plural: ROUGE lowercases and does not stem; BLEU is case-sensitive
    ("Bright colours look good", "Wide legs hide the hips."),  # nothing in common
    ("", "Wide legs hide the hips."),
]
# jieba's segmentation of every Chinese line, asserted first, so the hand computations below can use these words.
WORDS = {
    "这款连衣裙采用简约的圆领设计，显得大方优雅。": "这 款 连衣裙 采用 简约 的 圆领 设计 ， 显得 大方 优雅 。",
    "简约的设计": "简约 的 设计",
    "简约大方的设计": "简约 大方 的 设计",
    "这款衬衫采用雪纺面料，简约又舒适，简约百搭。": "这 款 衬衫 采用 雪纺 面料 ， 简约 又 舒适 ， 简约 百搭 。",
    "这款衬衫采用纯棉面料，穿着舒适透气。": "这 款 衬衫 采用 纯棉 面料 ， 穿着 舒适 透气 。",
    "裤子很宽大": "裤子 很 宽大",
    "宽松的版型，遮肉显瘦。": "宽松 的 版型 ， 遮肉 显瘦 。",
    "简约的设计 simple": "简约 的 设计 simple",  # jieba keeps the space as a token; rouge-chinese drops it
    "": "",
}


# ---------------------------------------------------------------- independent implementations

def ngrams(tokens, n):
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def f1(overlap, n_hyp, n_ref):
    p, r = overlap / n_hyp if n_hyp else 0.0, overlap / n_ref if n_ref else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def lcs(a, b):
    row = [0] * (len(b) + 1)
    for x in a:
        prev, row = row, [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
    return row[-1]


def clipped(hyp, ref, n):
    h, r = Counter(ngrams(hyp, n)), Counter(ngrams(ref, n))
    return sum(min(c, r[g]) for g, c in h.items()), sum(h.values())


def zh_by_hand(pred, ref):
    hyp, gold = WORDS[pred].split(), WORDS[ref].split()
    if not hyp or not gold:
        rouge = [0.0, 0.0, 0.0]
    else:  # rouge-chinese: ROUGE-N over *distinct* n-grams, ROUGE-L over all words
        rouge = [f1(len(set(ngrams(hyp, n)) & set(ngrams(gold, n))), len(set(ngrams(hyp, n))),
                    len(set(ngrams(gold, n)))) for n in (1, 2)]
        rouge.append(f1(lcs(hyp, gold), len(hyp), len(gold)))
    # NLTK sentence_bleu on characters, smoothing method 3: the k-th zero-match order gets 1 / (2^k * its count)
    hyp, gold = list(pred), list(ref)
    precisions, k = [], 1
    for n in (1, 2, 3, 4):
        match, total = clipped(hyp, gold, n)
        if match == 0 and n == 1:
            return [100 * v for v in rouge] + [0.0]
        if match == 0:
            precisions.append(1 / (2 ** k * max(total, 1)))
            k += 1
        else:
            precisions.append(match / total)
    bp = 1.0 if len(hyp) > len(gold) else math.exp(1 - len(gold) / len(hyp))
    bleu = bp * math.exp(sum(0.25 * math.log(p) for p in precisions))
    return [100 * v for v in rouge + [bleu]]


def en_by_hand(pred, ref):
    if not pred:
        return [0.0] * 4
    # rouge_score's tokens: lowercase, runs of ASCII letters/digits; counts clipped (a Counter intersection)
    hyp, gold = re.findall("[a-z0-9]+", pred.lower()), re.findall("[a-z0-9]+", ref.lower())
    rouge = [f1(clipped(hyp, gold, n)[0], len(ngrams(hyp, n)), len(ngrams(gold, n))) for n in (1, 2)]
    rouge.append(f1(lcs(hyp, gold), len(hyp), len(gold)))
    # sacrebleu 13a on these lines (letters, spaces, "." and "," only) splits off the punctuation, keeps the case
    hyp, gold = re.findall(r"[A-Za-z]+|[.,]", pred), re.findall(r"[A-Za-z]+|[.,]", ref)
    stats = [clipped(hyp, gold, n) for n in (1, 2, 3, 4)]
    if not any(match for match, _ in stats):
        return [100 * v for v in rouge] + [0.0]
    precisions, smooth = [], 1
    for match, total in stats:
        if total == 0:  # effective order: orders longer than the hypothesis are left out
            break
        if match == 0:  # exp smoothing: 100 / (2^k * count)
            smooth *= 2
        precisions.append(100 * match / total if match else 100 / (smooth * total))
    bp = 1.0 if len(hyp) >= len(gold) else math.exp(1 - len(gold) / len(hyp))
    bleu = bp * math.exp(sum(math.log(p) for p in precisions) / len(precisions))
    return [100 * v for v in rouge] + [bleu]


def check(result, expected, n):
    assert result["samples"] == n
    assert [result[k] for k in KEYS] == pytest.approx(expected, abs=1e-3)


def mean(rows):
    return [sum(col) / len(rows) for col in zip(*rows)]


# ---------------------------------------------------------------- tests

def test_jieba_segments_the_fixture_as_asserted():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    for text, words in WORDS.items():
        assert " ".join(jieba.cut(text)).split() == words.split(), text
    for pred, ref in EN:  # the hand 13a tokeniser above holds only for such lines
        assert re.fullmatch("[A-Za-z .,]*", pred + ref)


def test_chinese_worked_by_hand():
    # 简约 的 设计 vs 简约 大方 的 设计.  ROUGE-1: 3 of 3 words match, 3 of 4: F = 2*1*(3/4)/(1+3/4) = 6/7 -> 85.7143.
    # ROUGE-2: {简约的, 的设计} vs {简约大方, 大方的, 的设计}: 1 match, P 1/2, R 1/3, F = 2*(1/6)/(5/6) = 0.4 -> 40.
    # ROUGE-L: LCS 简约 的 设计 = 3 words -> 6/7 again.
    # BLEU on characters 简约的设计 (5) vs 简约大方的设计 (7): 1-grams 5/5; 2-grams 简约 的设 设计 = 3/4; 3-grams 的设计 = 1/3;
    # 4-grams 0/2 -> method 3: 1/(2^1*2) = 1/4.  BP = exp(1 - 7/5) = exp(-0.4).
    # BLEU = exp(-0.4) * (1 * 3/4 * 1/3 * 1/4)^(1/4) = exp(-0.4) * (1/16)^(1/4) = 0.5 * 0.670320 -> 33.5160.
    # (On words it would be 3 words vs 4: exp(1 - 4/3) * (1 * 1/2 * 1/(2*1) * 1/(4*1))^(1/4) -> 35.8266, not 33.516.)
    check(score_generations(["简约的设计"], ["简约大方的设计"]), [600 / 7, 40.0, 600 / 7, 50 * math.exp(-0.4)], 1)
    # 裤子 很 宽大 vs 宽松 的 版型 ， 遮肉 显瘦 。: no word in common -> ROUGE 0.  On characters 裤子很宽大 (5) vs
    # 宽松的版型，遮肉显瘦。 (11): 1-grams 宽 = 1/5; 2-, 3-, 4-grams 0/4, 0/3, 0/2 -> 1/(2*4), 1/(4*3), 1/(8*2).
    # BLEU = exp(1 - 11/5) * (1/5 * 1/8 * 1/12 * 1/16)^(1/4) = exp(-1.2) * 7680^(-1/4) = 0.301194 * 0.106822 -> 3.2174.
    # (On words there is no matching unigram: BLEU 0.)
    check(score_generations(["裤子很宽大"], ["宽松的版型，遮肉显瘦。"]), [0, 0, 0, 100 * math.exp(-1.2) * 7680 ** -0.25], 1)
    assert score_generations(["裤子很宽大"], ["宽松的版型，遮肉显瘦。"])["bleu-4"] == pytest.approx(3.2174, abs=1e-3)


def test_english_worked_by_hand():
    # soft cotton dress vs soft cotton shirt.  ROUGE-1 2/3 both ways -> 66.6667; ROUGE-2 {soft cotton, cotton dress}
    # vs {soft cotton, cotton shirt}: 1/2 -> 50; ROUGE-L LCS 2 -> 66.6667.
    # sacrebleu: 1-grams 2/3, 2-grams 1/2, 3-grams 0/1 -> exp smoothing 1/(2*1); no 4-grams in a 3-word hypothesis
    # (effective order 3); BP 1.  BLEU = 100 * (2/3 * 1/2 * 1/2)^(1/3) = 100 * 6^(-1/3) -> 55.0321.
    check(score_generations(["soft cotton dress"], ["soft cotton shirt"]),
          [200 / 3, 50.0, 200 / 3, 100 * 6 ** (-1 / 3)], 1)
    # soft fabric vs "Soft fabrics.": ROUGE tokens soft fabric / soft fabrics (lowercased, no stemmer): 1 of 2 -> 50,
    # no bigram -> 0, LCS 1 -> 50.  BLEU tokens soft fabric / Soft fabrics . : case-sensitive, no unigram -> 0.
    check(score_generations(["soft fabric"], ["Soft fabrics."]), [50.0, 0.0, 50.0, 0.0], 1)


def test_identical_disjoint_and_empty():
    for pairs in (ZH, EN):
        same, _, _, *rest = pairs
        check(score_generations([same[0]], [same[1]]), [100.0] * 4, 1)
        *_, disjoint, empty = rest
        assert [score_generations([disjoint[0]], [disjoint[1]])[k] for k in KEYS[:3]] == [0.0] * 3
        check(score_generations([empty[0]], [empty[1]]), [0.0] * 4, 1)
        check(score_generations(["   "], [empty[1]]), [0.0] * 4, 1)


@pytest.mark.parametrize("pairs, by_hand", [(ZH, zh_by_hand), (EN, en_by_hand)], ids=["chinese", "english"])
def test_fixture_equals_the_hand_implementation(pairs, by_hand):
    rows = [by_hand(p, r) for p, r in pairs]
    for (pred, ref), row in zip(pairs, rows):
        check(score_generations([pred], [ref]), row, 1)
    result = score_generations([p for p, _ in pairs], [r for _, r in pairs])
    check(result, mean(rows), len(pairs))
    assert "sacrebleu" in result["scoring"] and "character" in result["scoring"] and "no stemmer" in result["scoring"]


def test_chinese_rouge_counts_distinct_ngrams_like_rouge_chinese():
    # The repeated pair: 14 words but 12 distinct (简约 and ， twice), 11 in the reference, 8 shared.
    # ROUGE-1 F = 2 * (8/12) * (8/11) / (8/12 + 8/11) = 16/23 -> 69.5652 (a count-based 8/14 would give 64.0).
    pred, ref = ZH[2]
    assert score_generations([pred], [ref])["rouge-1"] == pytest.approx(1600 / 23, abs=1e-3)


def test_mixed_list_averages_per_sample():
    pairs = ZH + EN
    rows = [zh_by_hand(p, r) for p, r in ZH] + [en_by_hand(p, r) for p, r in EN]
    result = score_generations([p for p, _ in pairs], [r for _, r in pairs])
    check(result, mean(rows), 11)
    # per sample, not the mean of the two languages' means (5 Chinese, 6 English samples)
    by_language = mean([mean(rows[:5]), mean(rows[5:])])
    assert all(abs(result[k] - v) > 0.01 for k, v in zip(KEYS, by_language))


def test_the_reference_decides_the_language():
    # Chinese reference, prediction with an English word: jieba words 简约 的 设计 simple vs 简约 的 设计: ROUGE-1
    # F = 2*(3/4)*1/(3/4+1) = 6/7 -> 85.7143 (rouge_score would see no reference token at all and give 0).
    result = score_generations(["简约的设计 simple"], ["简约的设计"])
    assert [result[k] for k in KEYS[:3]] == pytest.approx([600 / 7, 80.0, 600 / 7], abs=1e-3)  # 2 of 3, 2 of 2
    # English reference, prediction with Chinese characters: rouge_score keeps only ASCII letters/digits, so both
    # sides are `simple design` -> ROUGE 100 (jieba words would add 简约 的 设计 and give 2*(2/5)/(1+2/5) = 57.1429).
    result = score_generations(["简约的设计 simple design"], ["simple design"])
    assert [result[k] for k in KEYS[:3]] == pytest.approx([100.0] * 3, abs=1e-3)


def test_bad_input_is_a_data_error():
    with pytest.raises(DataError, match="2 predictions and 1 references"):
        score_generations(["a", "b"], ["a"])
    with pytest.raises(DataError, match="empty"):
        score_generations([], [])
    with pytest.raises(DataError, match=r"references\[0\] must be a string"):
        score_generations(["a"], [None])


def test_import_is_cheap_and_jieba_is_quiet():
    code = ("import sys, tunekit.scores as s\n"
            "heavy = {'jieba', 'nltk', 'rouge_chinese', 'rouge_score', 'sacrebleu'} & set(sys.modules)\n"
            "assert not heavy, heavy\n"
            "print(s.score_generations(['简约的设计'], ['简约大方的设计'])['rouge-2'])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(40.0, abs=1e-3)
    assert "prefix dict" not in done.stderr and "Loading model" not in done.stderr, done.stderr
