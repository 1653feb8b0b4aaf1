"""Learned fusion: a reranker that lorakit trains itself from the domain's Q&A records, in milliseconds.

Reciprocal rank fusion (`lorakit.rag.index.rrf`) treats the four lists of a hybrid + learned index alike and
reads ranks only. It cannot know that a near-copy of a logged question is strong evidence, that BM25's second
place with half the top score is weak, or that the log's questions point at one *document* even when they
point at no single article. Here the candidates (the union of each list's top `TOP`) are scored by a logistic
regression over, per list, the log of the candidate's rank and its score relative to the list's best, plus two
features of the candidate itself: the log of the article's length.

It is fit on the training questions only, by folds, so that what the learned lists say about a question is
what they would say about a new one: for each of `FOLDS` folds the index learns from the other folds (question
expansion, term map, question embeddings: `fold_index`) and the fold's questions give the features, labelled by
their source article. The same folds give the cross-validated MRR of RRF and of the fitted model (stored with
it, shown by `rag index`). It is opt-in (`--fusion learned`): it wins that cross-validation and the bundled short
set, but loses on the colloquial set over both folders (README, retrieval table): questions unlike the log's are
what the folds cannot show it.

A document-closeness feature (how close the query comes to the training questions of the candidate's document)
was tried and left out: documents the log never cites got a fixed penalty that the folds, in which every
held-out question's document is cited by others, taught the model to trust.

A numpy Newton solver for L2-regularised logistic regression is a dozen lines; scikit-learn would add a large
dependency for it.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from lorakit.rag.index import Index

FOLDS = 5
TOP = 30  # candidates: the union of each list's top 30 (recall@30 of the fused list is ~0.98 on the short set)
DEPTH = 100  # deeper than this a list's rank counts as "absent"
L2 = 1.0  # ridge on the weights (not the bias); 0.1–10 were within 0.005 MRR in the cross-validation


@dataclass
class Fusion:
    mode: str  # the retrieval mode whose lists it fuses (bm25 or hybrid)
    lists: list[str]  # the lists, in feature order
    weights: list[float]  # one per feature, then the bias
    cv: dict = field(default_factory=dict)  # {"questions", "folds", "rrf": {...}, "learned": {...}}

    @property
    def better_in_cv(self) -> bool:
        """Whether its cross-validated MRR beat RRF's on the training questions."""
        return self.cv.get("learned", {}).get("mrr", 0.0) > self.cv.get("rrf", {}).get("mrr", 1.0)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fusion":
        return cls(str(d["mode"]), list(d["lists"]), [float(x) for x in d["weights"]], dict(d.get("cv", {})))

    def order(self, index: "Index",
              lists: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[tuple[int, float, dict[str, int]]]:
        """(chunk id, score, {list: rank}) best first: the candidates by the model's score, then the rest in RRF
        order (what `Index.ranking` returns)."""
        from lorakit.rag.index import RRF_K, rrf
        fused = rrf({n: ids[:DEPTH] for n, (ids, _) in lists.items()}, k=RRF_K)
        cands, X = features(index, lists)
        s = np.hstack([X, np.ones((len(X), 1))]) @ np.asarray(self.weights)
        ranks = {i: r for i, _, r in fused}
        head = [(cands[j], float(s[j]), ranks.get(cands[j], {})) for j in np.argsort(-s, kind="stable")]
        seen = set(cands)
        return head + [(i, sc, r) for i, sc, r in fused if i not in seen]


def feature_names(lists: Sequence[str]) -> list[str]:
    return ["log_length"] + [f"{n}:{f}" for n in lists for f in ("-log_rank", "score_vs_best")]


def features(index: "Index", lists: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[list[int], np.ndarray]:
    """Candidates (the union of each list's top `TOP`, first seen first) and their feature rows."""
    cands = list(dict.fromkeys(int(i) for ids, _ in lists.values() for i in ids[:TOP]))
    pos = {n: {int(i): p for p, i in enumerate(ids[:DEPTH])} for n, (ids, _) in lists.items()}
    rows = []
    for c in cands:
        row = [float(np.log(len(index.chunks[c].text) + 1))]
        for n, (ids, sc) in lists.items():
            p = pos[n].get(c)
            row.append(-float(np.log(p + 1 if p is not None else DEPTH + 1)))
            if n.startswith("bm25"):  # BM25 scores: a share of the best; cosines: a gap to the best
                row.append(float(sc[p] / sc[0]) if p is not None and sc[0] > 0 else 0.0)
            else:
                row.append(float(sc[p] - sc[0]) if p is not None else float(sc[min(len(sc), DEPTH) - 1] - sc[0]))
        rows.append(row)
    return cands, np.asarray(rows, dtype=np.float64).reshape(len(cands), 1 + 2 * len(lists))


def fold_index(index: "Index", pairs: Sequence[tuple[str, int]], vectors: dict[str, np.ndarray] | None) -> "Index":
    """``index`` with what it learned replaced by what ``pairs`` (question, chunk id) teach; question
    embeddings are taken from ``vectors`` (question → e5 query embedding) instead of being computed again."""
    from lorakit.rag.index import BM25, passage_text, segment
    from lorakit.rag.learn import expansion_text, learn
    learned = learn(pairs, index.chunks)
    texts = [passage_text(c) for c in index.chunks]
    bm25_learned = BM25.build([segment(t + "\n" + expansion_text(learned, i)) for i, t in enumerate(texts)])
    qe = None
    if vectors is not None and index.embeddings is not None:
        qe = np.stack([vectors[q] for q, _ in learned.question_list()]).astype(np.float32)
    return replace(index, learned=learned, bm25_learned=bm25_learned, question_embeddings=qe, fusion=None)


def question_vectors(index: "Index") -> dict[str, np.ndarray] | None:
    """Training question → its e5 query embedding, from the index's own question embeddings."""
    if index.question_embeddings is None or index.learned is None:
        return None
    return {q: index.question_embeddings[n] for n, (q, _) in enumerate(index.learned.question_list())}


def _logistic(X: np.ndarray, y: np.ndarray, l2: float = L2, iters: int = 30) -> np.ndarray:
    """Weights (then bias) of an L2-regularised logistic regression, by Newton's method."""
    X1 = np.hstack([X, np.ones((len(X), 1))])
    w = np.zeros(X1.shape[1])
    ridge = l2 * np.r_[np.ones(X.shape[1]), 0.0]
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(X1 @ w, -30, 30)))
        g = X1.T @ (p - y) + ridge * w
        H = X1.T @ (X1 * (p * (1 - p))[:, None]) + np.diag(ridge + 1e-9)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _summary(ranks: Sequence[int]) -> dict:
    r = np.asarray(ranks, dtype=np.float64)
    return {"mrr": round(float(np.mean(1 / r)), 4),
            **{f"recall@{k}": round(float(np.mean(r <= k)), 4) for k in (1, 3, 5)}}


def fit(index: "Index", *, folds: int = FOLDS, seed: int = 0) -> Fusion | None:
    """Fit the fusion of ``index``'s default mode from the questions it learned (`Index.learned`), by folds.

    None when there is too little to fit (fewer questions than twice the folds)."""
    from lorakit.rag.index import RRF_K, rrf
    if index.learned is None:
        return None
    pairs = index.learned.question_list()
    if len(pairs) < 2 * folds:
        return None
    gold = {}
    for q, c in pairs:
        gold.setdefault(q, set()).add(c)
    questions = list(gold)
    random.Random(seed).shuffle(questions)
    vectors = question_vectors(index)
    mode = index.default_mode()
    rows: list[tuple[int, list[int], np.ndarray, np.ndarray, list[int], set[int]]] = []
    names: list[str] = []
    for f in range(folds):
        held = set(questions[f::folds])
        fold = fold_index(index, [(q, c) for q, c in pairs if q not in held], vectors)
        for q in questions[f::folds]:
            v = vectors.get(q) if vectors else None
            lists = fold.fusion_lists(q, mode, vector=v)
            names = list(lists)
            cands, X = features(fold, lists)
            y = np.array([c in gold[q] for c in cands], dtype=np.float64)
            base = [i for i, _, _ in rrf({n: ids[:DEPTH] for n, (ids, _) in lists.items()}, k=RRF_K)]
            rows.append((f, cands, X, y, base, gold[q]))

    def rank(order: Sequence[int], want: set[int]) -> int:
        return next((p + 1 for p, i in enumerate(order) if i in want), 10 ** 6)

    fused_ranks, model_ranks = [], []
    for f in range(folds):
        train = [r for r in rows if r[0] != f]
        w = _logistic(np.vstack([r[2] for r in train]), np.concatenate([r[3] for r in train]))
        for _, cands, X, _, base, want in (r for r in rows if r[0] == f):
            s = np.hstack([X, np.ones((len(X), 1))]) @ w
            head = [cands[j] for j in np.argsort(-s, kind="stable")]
            model_ranks.append(rank(head + [i for i in base if i not in set(cands)], want))
            fused_ranks.append(rank(base, want))
    w = _logistic(np.vstack([r[2] for r in rows]), np.concatenate([r[3] for r in rows]))
    cv = {"questions": len(questions), "folds": folds, "rrf": _summary(fused_ranks),
          "learned": _summary(model_ranks),
          "features": feature_names(names)}
    return Fusion(mode, names, [round(float(x), 6) for x in w], cv)
