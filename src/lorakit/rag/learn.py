"""What retrieval learns from the domain's own Q&A records: questions attached to the article they cite, and a
map from the words people use to the words the statutes use.

A question-and-answer log whose records carry ``source`` (document + article) says, record by record, which
article answers a question written in everyday language. Two things are learned from it, both stored in the
index folder (``learned.json``) and both optional:

* **questions per article** (document expansion, as doc2query does with generated questions): the BM25 text
  of an article gets the training questions that cite it, so a new question worded like an old one meets
  the article even when it shares no word with the statute;
* **a colloquial → statutory term map**: for a question word ``w`` and a word ``t`` of its article that the
  question does not use and that shares a character with ``w`` (everyday words and statute words for the same
  thing usually do: 驾照/驾驶证, 喝酒/饮酒, 扣分/记分), the share of the questions with ``w`` whose article has
  ``t`` times the log of its lift over ``t``'s base rate (the rank), kept when seen at least twice and lifted 1.5×.
  The pairs come out of the data, not a hand-written list; without the shared character, 172 records
  mostly teach coincidences (驾照 → 百分之五十).
  At query time each mapped term is added with half that share as its weight, so the user's own words still count most.

Only records whose source resolves to an indexed article are used; held-out data must never be given here.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

from lorakit.data.build import Chunk

MIN_PAIRS = 2  # a word pair seen once is noise
TOP_TERMS = 4  # statutory terms kept per colloquial word
EXPANSION_WEIGHT = 0.5  # a mapped term counts this much of a word the user wrote


def words(text: str) -> list[str]:
    """The BM25 words of a text without the single characters (the term map is about words)."""
    from lorakit.rag.index import _is_cjk, segment
    return [w for w in segment(text) if not (len(w) == 1 and _is_cjk(w))]


@dataclass
class Learned:
    questions: dict[int, list[str]] = field(default_factory=dict)  # chunk id → training questions citing it
    terms: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # word → [(statute term, weight)]
    records: int = 0  # records used
    sources: list[str] = field(default_factory=list)  # files learned from

    def expand(self, query_words: Sequence[str]) -> dict[str, float]:
        """Query term weights: the user's words (1 each, repeats add) plus mapped statute terms (weight < 1)."""
        weights: dict[str, float] = Counter(query_words)
        for w in set(query_words):
            for t, wt in self.terms.get(w, ()):
                if t not in weights or weights[t] < wt:
                    weights[t] = max(weights.get(t, 0.0), wt)
        return dict(weights)

    def question_list(self) -> list[tuple[str, int]]:
        """(question, chunk id) in a fixed order (chunk id, then as learned): rows of question_embeddings.npy."""
        return [(q, c) for c in sorted(self.questions) for q in self.questions[c]]

    def as_dict(self) -> dict:
        return {"records": self.records, "sources": self.sources,
                "questions": {str(k): v for k, v in self.questions.items()},
                "terms": {w: [[t, round(x, 4)] for t, x in ts] for w, ts in self.terms.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Learned":
        return cls({int(k): list(v) for k, v in d.get("questions", {}).items()},
                   {w: [(t, float(x)) for t, x in ts] for w, ts in d.get("terms", {}).items()},
                   int(d.get("records", 0)), list(d.get("sources", [])))


def learn(pairs: Sequence[tuple[str, int]], chunks: Sequence[Chunk], *, sources: Sequence[str] = ()) -> Learned:
    """Learn from (question, chunk id) pairs over the indexed ``chunks``."""
    from lorakit.rag.index import passage_text
    pairs = list(dict.fromkeys(pairs))  # a question repeated in the data (or a file given twice) counts once
    questions: dict[int, list[str]] = defaultdict(list)
    for q, cid in pairs:
        if q not in questions[cid]:
            questions[cid].append(q)

    chunk_words = {i: set(words(passage_text(chunks[i]))) for i in questions}
    seen: Counter = Counter()
    pair: Counter = Counter()
    prior: Counter = Counter()  # in how many pairs an article has the term
    for q, cid in pairs:
        qw = set(words(q))
        seen.update(qw)
        prior.update(chunk_words[cid])
        for w in qw:
            for t in chunk_words[cid]:
                if t != w and set(t) & set(w) and (t not in qw):
                    pair[w, t] += 1
    n = max(len(pairs), 1)
    scored: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (w, t), c in pair.items():
        if c < MIN_PAIRS:
            continue
        p_tw = c / seen[w]
        lift = p_tw / (prior[t] / n)
        if lift > 1.5:
            scored[w].append((t, p_tw * math.log(lift), p_tw))
    terms = {w: [(t, round(EXPANSION_WEIGHT * p, 4)) for t, _, p in sorted(ts, key=lambda y: -y[1])[:TOP_TERMS]]
             for w, ts in scored.items()}
    return Learned(dict(questions), terms, len(pairs), list(sources))


def expansion_text(learned: Learned | None, chunk_id: int) -> str:
    """The training questions appended to a chunk's BM25 text ('' when none)."""
    if not learned or chunk_id not in learned.questions:
        return ""
    return "\n".join(learned.questions[chunk_id])
