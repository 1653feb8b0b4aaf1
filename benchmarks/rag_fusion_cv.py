"""The fusion's settings, by k-fold cross-validation on the training Q&A only: how much weight the learned
lists get (`LEARNED_WEIGHT`) and the rank constant of reciprocal rank fusion (`RRF_K`).

For each fold the index learns from the other folds (question expansion, term map, question embeddings) and
the fold's questions are retrieved once per list; every (rank constant, weight) pair fuses those lists, and
recall@1/3/5/10 and MRR per pair are printed. Held-out sets are never used here, so the defaults it picks are
not tuned to them.

    python benchmarks/rag_fusion_cv.py INDEX_DIR TRAIN.jsonl [--folds 5] [--weights 0.5,1,1.5,2,3] [--rrf-k 10,60]
"""
from __future__ import annotations

import argparse
import random

import numpy as np

from lorakit.evaluate.compare import load_eval_records
from lorakit.rag.fusion import fold_index, question_vectors
from lorakit.rag.index import load_index, rrf
from lorakit.rag.ingest import source_chunks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("train")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--weights", default="0.5,1,1.5,2,3,5")
    ap.add_argument("--rrf-k", default="60")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    index = load_index(a.index)
    grid = [(int(k), float(w)) for k in a.rrf_k.split(",") for w in a.weights.split(",")]
    pairs = []
    for r in load_eval_records(a.train):
        ids, _, _ = source_chunks(r.source, index.chunks)
        if ids:
            pairs.append((r.prompt, ids[0], set(ids)))
    random.Random(a.seed).shuffle(pairs)
    vectors = question_vectors(index)
    ranks = {g: [] for g in grid}
    for f in range(a.folds):
        test = pairs[f::a.folds]
        train = [(q, i) for j, (q, i, _) in enumerate(pairs) if j % a.folds != f]
        idx = fold_index(index, train, vectors)
        for q, _, want in test:
            v = vectors.get(q) if vectors else None
            lists = {n: ids[:100] for n, (ids, _) in idx.fusion_lists(q, idx.default_mode(), vector=v).items()}
            for k, w in grid:
                order = [i for i, _, _ in rrf(lists, k=k, weights={n: w for n in lists if n.endswith("+learned")})]
                ranks[(k, w)].append(next((p + 1 for p, i in enumerate(order) if i in want), 10 ** 6))
    print(f"{len(pairs)} training questions, {a.folds} folds, index {a.index} ({index.default_mode()})")
    print("rrf k  weight   r@1    r@3    r@5    r@10   MRR")
    for k, w in grid:
        r = np.array(ranks[(k, w)])
        print(f"{k:>5}  {w:>6} " + " ".join(f"{np.mean(r <= at):.3f} " for at in (1, 3, 5, 10)) + f"{np.mean(1 / r):.3f}")


if __name__ == "__main__":
    main()
