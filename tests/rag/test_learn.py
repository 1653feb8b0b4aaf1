"""What retrieval learns from the bundled training Q&A (`lorakit.rag.learn`), the learned index files, and the
retrieval recipes (`lorakit.rag.retrieve`) that switch it on and off. The law texts are read at run time."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lorakit.errors import LorakitError
from lorakit.evaluate.compare import load_eval_records
from lorakit.rag.compare import default_recipes, retrieval_recall
from lorakit.rag.index import Index, build_index, load_index, segment
from lorakit.rag.ingest import source_chunks
from lorakit.rag.learn import EXPANSION_WEIGHT, TOP_TERMS, Learned, expansion_text, learn
from lorakit.rag.retrieve import Recipe, Retriever

from rag_paths import demo_eval

QUERIES = ["酒驾被查到会怎么罚？", "驾照被扣分了怎么办", "考驾照需要什么条件", "交通肇事后逃逸致人死亡怎么判"]


def demo_train():
    from lorakit.quickstart import demo_file
    return demo_file("train.jsonl")


@pytest.fixture(scope="module")
def learned_index(laws, tmp_path_factory):
    """BM25 over the eight law texts, learned from the 172 demo training records (about a second)."""
    notes = []
    index = build_index([laws], tmp_path_factory.mktemp("learned") / "idx", dense=False,
                        learn_from=[demo_train()], on_note=notes.append)
    index.notes = notes
    return index


def full_scores(index, query, **kw) -> np.ndarray:
    ids, scores = index.bm25_ranking(query, **kw)
    out = np.zeros(len(index.chunks), dtype=np.float32)
    out[ids] = scores
    return out


# ============================================================================ the term map
def test_the_term_map_learns_everyday_to_statute_words(learned_index):
    terms = learned_index.learned.terms
    mapped = {w: [t for t, _ in ts] for w, ts in terms.items()}
    assert "驾驶证" in mapped["驾照"]  # driving licence: everyday word → the statutes' word
    assert mapped["扣分"][0] == "记分"  # points deducted → the statutes' scoring word, first
    assert "饮酒" in mapped["酒驾"] and "醉酒" in mapped["醉驾"]
    assert "赔偿" in mapped["赔钱"] and "号牌" in mapped["车牌"]
    # The shared-character rule keeps the coincidence the module docstring warns about out of the map.
    assert "百分之五十" not in mapped["驾照"]
    for w, ts in terms.items():
        assert 1 <= len(ts) <= TOP_TERMS, w
        assert len({t for t, _ in ts}) == len(ts), w
        for t, x in ts:
            assert t != w and set(t) & set(w), (w, t)  # everyday and statute word share a character
            assert 0 < x <= EXPANSION_WEIGHT, (w, t, x)
    assert all(0 < x <= 0.5 for ts in terms.values() for _, x in ts)


def test_expand_keeps_the_users_words_first(learned_index):
    L = learned_index.learned
    words = segment("驾照扣分")
    weights = L.expand(words)
    for w in words:
        assert weights[w] >= 1, w
    added = set(weights) - set(words)
    want = {t for w in set(words) for t, _ in L.terms.get(w, ())} - set(words)
    assert added == want and {"驾驶证", "记分"} <= added
    for t in added:
        assert 0 < weights[t] < 1, t
        assert weights[t] == max(x for w in set(words) for tt, x in L.terms.get(w, ()) if tt == t)
    assert L.expand(["驾照", "驾照"])["驾照"] == 2  # a word asked twice counts twice
    assert L.expand(["驾照", "驾驶证"])["驾驶证"] == 1  # a word the user wrote is never lowered to a mapped weight
    assert L.expand(["无关词"]) == {"无关词": 1}


def test_a_term_mapped_from_two_words_takes_the_larger_weight():
    L = Learned(terms={"甲": [("丙", 0.2)], "乙": [("丙", 0.4), ("丁", 0.1)]})
    assert L.expand(["甲", "乙"]) == {"甲": 1, "乙": 1, "丙": 0.4, "丁": 0.1}
    assert L.expand(["甲"]) == {"甲": 1, "丙": 0.2}


def test_learn_on_a_small_corpus_keeps_only_repeated_lifted_pairs():
    from lorakit.data.build import Chunk

    def chunk(n, text):
        return Chunk("示例规定", None, f"第{n}条", n, text)

    chunks = [chunk(1, "第一条 机动车驾驶证应当随身携带。"), chunk(2, "第二条 机动车号牌应当悬挂。"),
              chunk(3, "第三条 行人应当走人行横道。")]
    pairs = [("驾照丢了怎么办", 0), ("驾照过期了怎么办", 0), ("驾照丢了怎么办", 0), ("车牌掉了怎么办", 1),
             ("过马路要注意什么", 2)]
    L = learn(pairs, chunks, sources=["x.jsonl"])
    assert L.records == 4 and L.sources == ["x.jsonl"]  # the repeated (question, article) pair counts once
    assert L.questions == {0: ["驾照丢了怎么办", "驾照过期了怎么办"], 1: ["车牌掉了怎么办"], 2: ["过马路要注意什么"]}
    # 驾照 → 驾驶证: two distinct questions with 驾照, each citing an article with 驾驶证 (2 of 4 pairs: lift 2).
    assert dict(L.terms["驾照"])["驾驶证"] == EXPANSION_WEIGHT
    assert "车牌" not in L.terms  # 车牌 → 号牌 was seen once: noise
    assert expansion_text(L, 0) == "驾照丢了怎么办\n驾照过期了怎么办"
    assert expansion_text(L, 5) == "" and expansion_text(None, 0) == ""


def test_learned_round_trip_and_question_order(learned_index):
    L = learned_index.learned
    again = Learned.from_dict(json.loads(json.dumps(L.as_dict(), ensure_ascii=False)))
    assert again == L
    assert again.question_list() == L.question_list()
    ql = L.question_list()
    assert len(ql) == sum(len(v) for v in L.questions.values())
    owners = [c for _, c in ql]
    assert owners == sorted(owners)  # by chunk id …
    for c, qs in L.questions.items():  # … then in the order learned
        assert [q for q, o in ql if o == c] == qs
    # the order does not depend on the order of the dict
    shuffled = Learned({5: ["b", "a"], 2: ["c"]})
    assert shuffled.question_list() == [("c", 2), ("b", 5), ("a", 5)]
    assert Learned.from_dict(shuffled.as_dict()).question_list() == shuffled.question_list()


# ============================================================================ the learned index
def test_learned_index_files_meta_and_reload(learned_index):
    path = learned_index.path
    assert sorted(p.name for p in path.iterdir()) == ["bm25.npz", "bm25_learned.npz", "chunks.jsonl",
                                                      "fusion.json", "learned.json", "meta.json"]
    records = load_eval_records(demo_train())
    cited = [source_chunks(r.source, learned_index.chunks)[0] for r in records]
    usable = [ids[0] for ids in cited if ids]
    assert len(usable) == len(records) == 172 and not learned_index.notes  # every training source is indexed
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))["learned"]
    assert meta == learned_index.meta["learned"]
    assert meta["records"] == 172 and meta["articles"] == len(set(usable)) == len(learned_index.learned.questions)
    assert meta["terms"] == len(learned_index.learned.terms) > 0 and meta["sources"] == [str(demo_train())]
    again = load_index(path)
    assert again.has_learned and again.learned == learned_index.learned and again.fusion == learned_index.fusion
    assert again.question_embeddings is None  # BM25 only: no question embeddings
    for q in QUERIES:
        for learned in (True, False):
            a = [(h.id, h.score) for h in again.search(q, 10, "bm25", learned=learned)]
            b = [(h.id, h.score) for h in learned_index.search(q, 10, "bm25", learned=learned)]
            assert a == b, (q, learned)
        assert again.ranking(q, "bm25") == learned_index.ranking(q, "bm25")


def test_without_learned_the_search_is_the_plain_indexs(learned_index, bm25_index):
    assert not bm25_index.has_learned and learned_index.has_learned
    for q in QUERIES + [r.prompt for r in load_eval_records(demo_eval())[:10]]:
        plain = [(h.id, h.score) for h in bm25_index.search(q, 10, "bm25")]
        assert [(h.id, h.score) for h in learned_index.search(q, 10, "bm25", learned=False)] == plain, q
        # on an index without learned data, learned=True changes nothing
        assert [(h.id, h.score) for h in bm25_index.search(q, 10, "bm25", learned=True)] == plain, q


def test_learned_recall_on_the_held_out_demo_set(learned_index, capsys):
    records = load_eval_records(demo_eval())
    ret = retrieval_recall(learned_index, records, recipes=[Recipe(mode="bm25", learned=False),
                                                            Recipe(mode="bm25", learned=True)])
    assert ret.matched == ret.total == 45
    plain, learned = ret.modes["bm25"], ret.modes["bm25 + learned"]
    with capsys.disabled():
        print(f"\nBM25 recall@5 on the 45 held-out demo questions: {plain['recall@5']:.3f} without, "
              f"{learned['recall@5']:.3f} with what the index learned from train.jsonl "
              f"(MRR {plain['mrr']:.3f} → {learned['mrr']:.3f})")
    assert learned["recall@5"] > plain["recall@5"]  # measured 0.533 → 0.600 (fused with plain BM25)
    assert learned["mrr"] > plain["mrr"]
    # the learned list alone (question-expanded articles + term map) is much stronger on questions like the log's
    alone = [learned_index.bm25_ranking(r.prompt, questions=True, terms=True)[0][:5].tolist() for r in records]
    wanted = [set(source_chunks(r.source, learned_index.chunks)[0]) for r in records]
    assert sum(bool(set(a) & w) for a, w in zip(alone, wanted)) / len(records) >= 0.8  # measured 0.844


def test_training_questions_find_their_own_article(learned_index):
    """Document expansion: a training question is part of its article's learned BM25 text."""
    hit = plain = 0
    records = load_eval_records(demo_train())
    for r in records:
        want = source_chunks(r.source, learned_index.chunks)[0]
        hit += learned_index.bm25_ranking(r.prompt, questions=True)[0][0] in want
        plain += learned_index.bm25_ranking(r.prompt)[0][0] in want
    assert hit >= 0.95 * len(records) and plain < hit  # measured 169 vs 61 of 172


def test_term_expansion_only_adds_score(learned_index):
    """Mapped terms carry positive weights, so with ``terms`` no chunk scores less than without, and a chunk
    with the statute word (驾驶证) gains when the user wrote the everyday one (驾照)."""
    q = "驾照被扣分了怎么办"
    plain = full_scores(learned_index, q)
    terms = full_scores(learned_index, q, terms=True)
    assert np.all(terms >= plain - 1e-6)
    has = [i for i, c in enumerate(learned_index.chunks) if "驾驶证" in c.text and "记分" in c.text]
    assert has and all(terms[i] > plain[i] for i in has)
    # questions=True scores against the BM25 texts expanded with the training questions: other statistics
    assert not np.array_equal(full_scores(learned_index, q, questions=True), plain)


def test_a_learn_file_without_usable_sources_is_refused(laws, tmp_path):
    bad = tmp_path / "nowhere.jsonl"
    rows = [{"messages": [{"role": "user", "content": "上下班途中被撞算工伤吗？"},
                          {"role": "assistant", "content": "可能认定为工伤。"}],
             "source": {"document": "工伤保险条例", "article": "第十四条"}},  # a law the traffic index lacks
            {"messages": [{"role": "user", "content": "酒后能开车吗？"}, {"role": "assistant", "content": "不能。"}]}]
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        build_index([laws], tmp_path / "idx", dense=False, learn_from=[bad])
    assert "nowhere.jsonl" in str(e.value) and "nothing to learn from" in str(e.value)
    assert e.value.field == "source" and "\n" not in str(e.value)
    assert not (tmp_path / "idx").exists()  # nothing written


def test_records_without_an_indexed_article_are_left_out_with_a_note(small_laws, tmp_path):
    notes = []
    index = build_index([small_laws], tmp_path / "idx", dense=False, learn_from=[demo_train()],
                        on_note=notes.append)
    records = load_eval_records(demo_train())
    usable = sum(bool(source_chunks(r.source, index.chunks)[0]) for r in records)
    assert 0 < usable < len(records)
    assert index.meta["learned"]["records"] == usable
    assert len(notes) == 1 and f"learned from {usable} records; {len(records) - usable} without" in notes[0]
    assert max(index.learned.questions) < len(index.chunks)


# ============================================================================ recipes and the retriever
def test_recipe_labels():
    assert Recipe().label() == "default + learned"
    assert Recipe(mode="bm25", learned=False).label() == "bm25"
    assert Recipe(mode="bm25").label() == "bm25 + learned"
    assert Recipe(mode="dense", learned=False, rewrite="answer").label() == "dense + rewrite:answer"
    assert Recipe(mode="hybrid", rewrite="terms", rerank=20).label() == "hybrid + learned + rewrite:terms + rerank@20"
    assert not Recipe().needs_model and Recipe(rerank=3).needs_model and Recipe(rewrite="terms").needs_model


def test_recipe_resolved_against_the_index(bm25_index, learned_index):
    assert Recipe().resolved(bm25_index) == Recipe(mode="bm25", learned=False)  # nothing learned: off
    assert Recipe().resolved(learned_index) == Recipe(mode="bm25", learned=True)
    assert Recipe(mode="BM25", learned=False).resolved(learned_index) == Recipe(mode="bm25", learned=False)
    assert Recipe(rerank=5).resolved(bm25_index).label() == "bm25 + rerank@5"
    with pytest.raises(LorakitError, match="unknown query rewrite 'summary'") as e:
        Recipe(rewrite="summary").resolved(bm25_index)
    assert e.value.field == "rewrite" and "answer or terms" in str(e.value)
    with pytest.raises(LorakitError, match=r"rerank must be 0 \(off\)") as e:
        Recipe(rerank=-1).resolved(bm25_index)
    assert e.value.field == "rerank"
    with pytest.raises(LorakitError, match="has no embeddings"):
        Recipe(mode="dense").resolved(bm25_index)


@pytest.mark.parametrize("recipe", [Recipe(mode="bm25", rerank=5), Recipe(mode="bm25", rewrite="answer")])
def test_a_recipe_that_needs_a_model_without_one_is_a_user_error(bm25_index, recipe):
    with pytest.raises(LorakitError) as e:
        Retriever(bm25_index, recipe)
    msg = str(e.value)
    assert "needs a language model" in msg and f"'{recipe.resolved(bm25_index).label()}'" in msg
    assert "\n" not in msg and msg.count(". ") <= 2 and "turn rewrite and rerank off" in msg


def test_retriever_search_returns_k_ranked_hits(learned_index):
    questions = QUERIES[:3]
    for learned in (False, True):
        ret = Retriever(learned_index, Recipe(mode="bm25", learned=learned))
        got = ret.search(questions, 4)
        assert len(got) == 3
        for q, hits in zip(questions, got):
            assert [h.rank for h in hits] == [1, 2, 3, 4]
            assert [h.id for h in hits] == [h.id for h in learned_index.search(q, 4, "bm25", learned=learned)]
            assert all(h.chunk is learned_index.chunks[h.id] for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            assert all(set(h.ranks) <= {"bm25", "bm25+learned"} and "bm25" in h.ranks or learned for h in hits)
        assert ret.search_texts(questions) == questions  # no rewrite: searched as asked
    ret = Retriever(learned_index, Recipe(mode="bm25"))
    with pytest.raises(LorakitError, match="k must be at least 1"):
        ret.search(questions, 0)
    with pytest.raises(LorakitError, match="query is empty"):
        ret.search(["酒驾", "  "], 3)


def test_default_recipes_each_lever_once(bm25_index, learned_index, dense_index):
    assert [r.label() for r in default_recipes(bm25_index)] == ["bm25"]
    assert [r.label() for r in default_recipes(learned_index)] == ["bm25", "bm25 + learned",
                                                                   "bm25 + learned (learned fusion)"]
    assert [r.label() for r in default_recipes(dense_index)] == ["bm25", "dense", "hybrid"]
    both = dense_learned(dense_index, {})
    labels = [r.label() for r in default_recipes(both)]
    assert labels == ["bm25", "dense", "hybrid", "bm25 + learned", "dense + learned", "hybrid + learned"]
    levers = default_recipes(learned_index, lm_levers=True, base=Recipe(mode="bm25"))
    labels = [r.label() for r in levers]
    assert labels == ["bm25", "bm25 + learned", "bm25 + learned (learned fusion)", "bm25 + learned + rewrite:answer",
                      "bm25 + learned + rewrite:terms", "bm25 + learned + rerank@20"]
    # base resolved against the index: on one that learned nothing, the LM levers run without learned
    assert [r.label() for r in default_recipes(bm25_index, lm_levers=True)][1:] == [
        "bm25 + rewrite:answer", "bm25 + rewrite:terms", "bm25 + rerank@20"]
    for idx in (bm25_index, learned_index, dense_index, both):
        for lm in (False, True):
            rs = default_recipes(idx, lm_levers=lm)
            assert len(set(rs)) == len(rs) and len({r.label() for r in rs}) == len(rs)
            assert all(r.mode in ("bm25", "dense", "hybrid") for r in rs)


# ============================================================================ dense + learned questions
def dense_learned(dense_index, questions: dict[int, list[str]]) -> Index:
    """The small dense index with questions attached to chunks (embedded here: a few queries)."""
    from lorakit.rag import index as I
    L = Learned(questions=questions, records=sum(map(len, questions.values())))
    ql = L.question_list()
    qe = np.stack([I.embed_query(q) for q, _ in ql]).astype(np.float32) if ql else np.zeros((0, 384), np.float32)
    return Index(None, dense_index.chunks, dense_index.bm25, dense_index.embeddings, dense_index.meta, L,
                 None, qe)


def test_dense_questions_lift_the_article_they_cite(dense_index, monkeypatch):
    """dense_ranking(questions=True): an article also scores the similarity of the training questions that cite
    it. A question attached to an unrelated article brings that article to the top for the same question."""
    import functools

    import lorakit.rag.index as I
    monkeypatch.setattr(I, "embed_query", functools.lru_cache(maxsize=None)(I.embed_query))  # embed q once
    q = "酒后驾驶会受到什么处罚？"
    crime = next(i for i, c in enumerate(dense_index.chunks) if c.document.startswith("最高人民法院"))
    idx = dense_learned(dense_index, {crime: [q]})
    base_ids, base_s = dense_index.dense_ranking(q)
    assert base_ids[0] != crime
    ids, s = idx.dense_ranking(q, questions=True)
    assert ids[0] == crime and s[0] == pytest.approx(1.0, abs=1e-3)  # the question itself
    full = dict(zip(ids.tolist(), s.tolist()))
    plain = dict(zip(base_ids.tolist(), base_s.tolist()))
    assert all(full[i] == pytest.approx(plain[i], abs=1e-6) for i in plain if i != crime)  # others unchanged
    off_ids, off_s = idx.dense_ranking(q, questions=False)
    assert off_ids.tolist() == base_ids.tolist()
    assert [h.id for h in idx.search(q, 3, "dense", learned=False)] == [h.id for h in dense_index.search(q, 3, "dense")]
    # learned lists are added to the fusion, never replacing the passage ranking
    dense_fused = idx.search(q, len(idx.chunks), "dense")
    mine = next(h for h in dense_fused if h.id == crime)
    assert mine.ranks["dense+learned"] == 1 and mine.ranks["dense"] > 1
    assert mine.rank < next(h for h in dense_index.search(q, len(idx.chunks), "dense") if h.id == crime).rank
    fused = idx.search(q, len(idx.chunks), "hybrid")
    assert next(h for h in fused if h.id == crime).ranks["dense+learned"] == 1
    assert next(h for h in dense_index.search(q, len(idx.chunks), "hybrid") if h.id == crime).ranks["dense"] > 1
