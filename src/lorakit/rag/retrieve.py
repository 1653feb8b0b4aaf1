"""One retrieval recipe for every caller (ask, chat, server, eval, RAFT data): which levers, in which order.

    question ──rewrite (LM, optional)──▶ search text ──first stage (bm25 | dense | hybrid, learned)──▶ ranking
             ──rerank the top N (LM, optional)──▶ passages

`Recipe` names the levers, `Retriever` runs them over an index (and a loaded model, for the LM levers), in
batches, so `rag eval` can measure each lever alone: recall@k, MRR and seconds per question.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from lorakit.errors import LorakitError
from lorakit.rag.index import Hit, Index

REWRITES = ("answer", "terms")


@dataclass(frozen=True)
class Recipe:
    mode: str | None = None  # bm25 | dense | hybrid; None: hybrid when the index has embeddings, else bm25
    learned: bool = True  # use what the index learned from Q&A records (rag index --learn), when it has any
    rewrite: str | None = None  # LM query rewriting: "answer" (a hypothetical answer) or "terms" (legal issues)
    rerank: int = 0  # rerank the first stage's top N with the LM (0: off)
    depth: int = 100  # how deep each list goes into the hybrid fusion
    fusion: str | None = None  # rrf (None) | learned: the fusion fit on the training questions (opt-in)

    @property
    def needs_model(self) -> bool:
        return bool(self.rewrite or self.rerank)

    def resolved(self, index: Index) -> "Recipe":
        """The recipe with its mode made explicit and checked against the index; learned off where absent."""
        if self.rewrite is not None and self.rewrite not in REWRITES:
            raise LorakitError(f"unknown query rewrite '{self.rewrite}'", field="rewrite",
                               hint="Use answer or terms, or leave it off")
        if self.rerank < 0:
            raise LorakitError(f"rerank must be 0 (off) or the number of candidates (got {self.rerank})",
                               field="rerank")
        mode = index.check_mode(self.mode)
        learned = self.learned and index.has_learned
        index.fusion_for(mode, learned, self.fusion)  # refuses an unknown or missing fusion now, not per query
        return replace(self, mode=mode, learned=learned, fusion=self.fusion if learned else None)

    def label(self) -> str:
        parts = [self.mode or "default"]
        if self.learned:
            parts.append("learned" + (" (learned fusion)" if self.fusion == "learned" else ""))
        if self.rewrite:
            parts.append(f"rewrite:{self.rewrite}")
        if self.rerank:
            parts.append(f"rerank@{self.rerank}")
        return " + ".join(parts)


class Retriever:
    """An index, a recipe and, for the LM levers, a loaded (model, tokenizer, precision)."""

    def __init__(self, index: Index, recipe: Recipe = Recipe(), lm=None, *, batch_size: int = 8):
        self.index = index
        self.recipe = recipe.resolved(index)
        if self.recipe.needs_model and lm is None:
            raise LorakitError(f"the retrieval recipe '{self.recipe.label()}' needs a language model", field="rerank",
                               hint="Load one (rag ask/eval do), or turn rewrite and rerank off")
        self.lm = lm
        self.batch_size = batch_size
        self._reranker = None

    def search_texts(self, questions: Sequence[str]) -> list[str]:
        """What the first stage searches with: the question, or the question plus the model's rewrite."""
        if not self.recipe.rewrite:
            return list(questions)
        from lorakit.rag.rewrite import rewrite_query
        model, tokenizer, precision = self.lm
        return rewrite_query(questions, model, tokenizer, precision, style=self.recipe.rewrite,
                             batch_size=self.batch_size)

    def rankings(self, questions: Sequence[str]) -> list[list[tuple[int, float, dict[str, int]]]]:
        """For each question, (chunk id, score, {list: rank}) best first (after reranking, when on)."""
        for q in questions:
            if not q or not q.strip():
                raise LorakitError("the query is empty", field="query")
        r = self.recipe
        out = [self.index.ranking(text, r.mode, depth=r.depth, learned=r.learned, fusion=r.fusion)
               for text in self.search_texts(questions)]
        if r.rerank:
            from lorakit.rag.rerank import LMReranker, rerank
            if self._reranker is None:
                model, tokenizer, precision = self.lm
                self._reranker = LMReranker(model, tokenizer, precision, batch_size=self.batch_size)
            for n, (q, ranked) in enumerate(zip(questions, out)):
                head, tail = ranked[:r.rerank], ranked[r.rerank:]
                by_id = {i: (i, s, ranks) for i, s, ranks in head}
                order = rerank(self.index, q, [i for i, _, _ in head], self._reranker)
                out[n] = [(i, by_id[i][1], {**by_id[i][2], "rerank": p + 1}) for p, i in enumerate(order)] + tail
        return out

    def search(self, questions: Sequence[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise LorakitError(f"k must be at least 1 (got {k})", field="k")
        return top_hits(self.index, self.rankings(questions), k)


def top_hits(index: Index, rankings: Sequence, k: int) -> list[list[Hit]]:
    """The first ``k`` of each ranking ((chunk id, score, {list: rank}) lists) as the passages shown."""
    return [[Hit(i, index.chunks[i], s, p + 1, ranks) for p, (i, s, ranks) in enumerate(ranked[:k])]
            for ranked in rankings]
