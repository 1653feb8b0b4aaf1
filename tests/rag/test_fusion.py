"""The learned fusion on the real traffic-law texts: fit by folds on the demo training questions, saved and
reloaded, opt-in beside RRF, and a ranking of every chunk."""
from __future__ import annotations

import numpy as np
import pytest

from lorakit.errors import LorakitError
from lorakit.evaluate.compare import load_eval_records
from lorakit.quickstart import demo_file
from lorakit.rag.fusion import _logistic, features, fit
from lorakit.rag.index import build_index, load_index
from lorakit.rag.retrieve import Recipe, Retriever


@pytest.fixture(scope="module")
def learned(laws, tmp_path_factory):
    return build_index([laws], tmp_path_factory.mktemp("fusion") / "idx", dense=False,
                       learn_from=[demo_file("train.jsonl")])


def test_logistic_regression_finds_the_separating_direction():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] - 2 * X[:, 2] + 0.1 * rng.normal(size=400) > 0).astype(float)
    w = _logistic(X, y, l2=0.1)
    assert w[0] > 1 and w[2] < -2 and abs(w[1]) < 0.5 * abs(w[0])
    p = 1 / (1 + np.exp(-(np.hstack([X, np.ones((400, 1))]) @ w)))
    assert np.mean((p > 0.5) == (y > 0.5)) > 0.95


def test_fit_by_folds_saved_with_its_cross_validation(learned):
    f = learned.fusion
    assert f is not None and f.mode == "bm25" and f.lists == ["bm25", "bm25+learned"]
    assert len(f.weights) == len(f.cv["features"]) + 1 == 2 * 2 + 1 + 1  # rank + score per list, length, bias
    assert f.cv["questions"] == 172 and f.cv["folds"] == 5
    for name in ("rrf", "learned"):
        assert 0 < f.cv[name]["recall@1"] <= f.cv[name]["recall@3"] <= f.cv[name]["recall@5"] <= 1
    assert f.better_in_cv == (f.cv["learned"]["mrr"] > f.cv["rrf"]["mrr"])
    assert learned.meta["learned"]["fusion"]["better_in_cv"] == f.better_in_cv
    again = load_index(learned.path)
    assert again.fusion == f
    # refitting gives the same model (seeded folds)
    assert fit(learned).weights == f.weights


def test_ranking_with_the_learned_fusion_covers_every_chunk_and_follows_the_model(learned):
    q = "喝了酒开车被交警查到，驾照会被扣多久？"
    ranked = learned.ranking(q, "bm25", fusion="learned")
    ids = [i for i, _, _ in ranked]
    rrf_ids = [i for i, _, _ in learned.ranking(q, "bm25", fusion="rrf")]
    assert sorted(ids) == sorted(rrf_ids) and len(set(ids)) == len(ids)
    lists = learned.fusion_lists(q, "bm25")
    cands, X = features(learned, lists)
    scores = np.hstack([X, np.ones((len(X), 1))]) @ np.asarray(learned.fusion.weights)
    assert ids[:len(cands)] == [cands[j] for j in np.argsort(-scores, kind="stable")]
    assert [s for _, s, _ in ranked[:len(cands)]] == sorted(scores.tolist(), reverse=True)
    # opt-in: the default is RRF
    assert [i for i, _, _ in learned.ranking(q, "bm25")] == rrf_ids


def test_recipes_name_the_fusion_and_refuse_it_where_there_is_none(learned, bm25_index):
    r = Recipe(fusion="learned").resolved(learned)
    assert r.fusion == "learned" and "learned fusion" in r.label()
    assert Recipe(fusion="rrf").resolved(learned).label() == "bm25 + learned"
    with pytest.raises(LorakitError, match="no learned fusion"):
        Recipe(fusion="learned").resolved(bm25_index)
    with pytest.raises(LorakitError, match="unknown fusion"):
        Recipe(fusion="mean").resolved(learned)
    # on the held-out demo questions both fusions rank the source among the top 20 for most of them
    recs = load_eval_records(demo_file("eval.jsonl"))[:12]
    for fusion in ("rrf", "learned"):
        hits = Retriever(learned, Recipe(fusion=fusion)).search([x.prompt for x in recs], 20)
        found = sum(any(h.chunk.article == x.source["article"] for h in hs) for x, hs in zip(recs, hits))
        assert found >= 8


def test_a_query_no_list_finds_still_gets_a_ranking(learned):
    ranked = learned.ranking("zzqx", "bm25", fusion="learned")  # no BM25 term of the index
    assert ranked == learned.ranking("zzqx", "bm25", fusion="rrf")
