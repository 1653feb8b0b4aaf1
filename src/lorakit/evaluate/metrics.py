"""Text metrics that work for Chinese: jieba words for ROUGE/BLEU, characters as a fallback, article citations.

Pure functions of strings, so they are tested directly and reused by the RAG comparison.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache

_CN_NUM = "零一二三四五六七八九十百千两〇"
ARTICLE_RE = re.compile(rf"第\s*([{_CN_NUM}]+|\d+)\s*条")


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba
    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def normalize(text: str) -> str:
    """NFKC (full-width → half-width), lower-case, collapse whitespace: so '１２分' and '12分' compare equal."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def tokens(text: str) -> list[str]:
    """Words for Chinese (jieba), words for Latin script; punctuation and spaces dropped."""
    words = _jieba().lcut(normalize(text))
    return [w for w in words if w.strip() and not all(unicodedata.category(c).startswith(("P", "S", "Z"))
                                                       for c in w)]


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over jieba words (the usual choice for Chinese; LLaMA-Factory reports the same)."""
    p, r = tokens(prediction), tokens(reference)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def rouge_n(prediction: str, reference: str, n: int = 1) -> float:
    p, r = _ngrams(tokens(prediction), n), _ngrams(tokens(reference), n)
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    prec, rec = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * prec * rec / (prec + rec)


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 over jieba words with add-one smoothing for higher orders (Lin & Och 2004)."""
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return 0.0
    logs = []
    for n in range(1, 5):
        pn, rn = _ngrams(p, n), _ngrams(r, n)
        total = max(1, sum(pn.values()))
        match = sum((pn & rn).values())
        if n == 1 and match == 0:
            return 0.0
        logs.append(math.log((match + (n > 1)) / (total + (n > 1))))
    bp = 1.0 if len(p) > len(r) else math.exp(1 - len(r) / len(p))
    return bp * math.exp(sum(logs) / 4)


def exact_match(prediction: str, reference: str) -> float:
    strip = lambda s: re.sub(r"[\W_]+", "", normalize(s))  # noqa: E731
    return float(strip(prediction) == strip(reference))


def keyword_recall(prediction: str, keywords: list[str]) -> float | None:
    """Share of the reference's key terms that appear in the prediction (None when there are none)."""
    if not keywords:
        return None
    pred = normalize(prediction)
    return sum(1 for k in keywords if normalize(k) in pred) / len(keywords)


def chinese_numeral(text: str) -> int:
    """'九十一' → 91, '一百二十四' → 124, '91' → 91."""
    if text.isdigit():
        return int(text)
    digits = {c: i for i, c in enumerate("零一二三四五六七八九")}
    digits.update({"〇": 0, "两": 2})
    units = {"十": 10, "百": 100, "千": 1000}
    total, cur = 0, 0
    for ch in text:
        if ch in digits:
            cur = digits[ch]
        elif ch in units:
            total += (cur or 1) * units[ch]
            cur = 0
    return total + cur


def articles(text: str) -> set[int]:
    """Article numbers cited in a text (第九十一条, 第 91 条)."""
    return {chinese_numeral(m) for m in ARTICLE_RE.findall(normalize(text).replace(" ", ""))}


def citation_hit(prediction: str, article: str | None) -> float | None:
    """1 when the prediction cites the reference's article number, 0 when not, None when there is none."""
    if not article:
        return None
    want = articles(article)
    if not want:
        return None
    return float(bool(want & articles(prediction)))


def score(prediction: str, reference: str, *, keywords: list[str] | None = None,
          article: str | None = None) -> dict[str, float | None]:
    return {"rouge_l": rouge_l(prediction, reference), "rouge_1": rouge_n(prediction, reference, 1),
            "bleu_4": bleu4(prediction, reference), "exact_match": exact_match(prediction, reference),
            "keywords": keyword_recall(prediction, keywords or []), "citation": citation_hit(prediction, article)}


def mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
