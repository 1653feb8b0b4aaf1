"""Retrieval recall@k on the bundled held-out set and the four-way comparison on the tiny model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lorakit.data.formats import read_records
from lorakit.rag.compare import citation_exact, citation_known, rag_compare, retrieval_recall, source_target
from lorakit.rag.answer import citations

from rag_paths import demo_eval



def title_of(index, file_prefix: str) -> str:
    """A document's full title, read from the indexed texts (never written out in the repository)."""
    return next(c.document for c in index.chunks if Path(c.file).name.startswith(file_prefix))


def test_every_demo_question_maps_to_one_article(bm25_index):
    records = read_records(demo_eval())
    assert len(records) == 45
    for r in records:
        ids, title, why = source_target(r.source, bm25_index)
        assert len(ids) == 1 and why is None, (r.source, why)
        assert bm25_index.chunks[ids[0]].article == r.source["article"]


def test_bm25_recall_on_the_demo_set(bm25_index, capsys):
    ret = retrieval_recall(bm25_index, read_records(demo_eval()))
    assert ret.matched == ret.total == 45 and not ret.unmatched
    # The two Supreme People's Court interpretations are named by short names in the demo set.
    assert ret.mappings["最高法交通肇事刑事案件司法解释"] == title_of(bm25_index, "spc_traffic_crime")
    assert ret.mappings["最高法道路交通事故损害赔偿司法解释"] == title_of(bm25_index, "spc_accident_compensation")
    row = ret.modes["bm25"]
    with capsys.disabled():
        print("\nBM25 over the eight law texts, 45 demo questions: "
              + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    assert row["recall@1"] <= row["recall@3"] <= row["recall@5"]
    assert row["recall@5"] >= 0.45  # measured 0.533 (words alone: 0.422)


@pytest.mark.skipif(not os.environ.get("LORAKIT_RAG_FULL"), reason="embeds all 582 articles (minutes on 2 cores); "
                                                                    "set LORAKIT_RAG_FULL=1")
def test_dense_and_hybrid_recall_on_the_demo_set(laws, tmp_path, capsys):
    from lorakit.rag.index import build_index
    index = build_index([laws], tmp_path / "full", dense=True)
    ret = retrieval_recall(index, read_records(demo_eval()))
    with capsys.disabled():
        print()
        for mode, row in ret.modes.items():
            print(f"{mode:7}", ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    assert ret.modes["hybrid"]["recall@5"] >= ret.modes["bm25"]["recall@5"]


def test_citation_metrics(bm25_index):
    titles = bm25_index.titles
    src = {"document": "中华人民共和国道路交通安全法", "article": "第九十一条"}
    assert citation_exact("根据《道路交通安全法》第九十一条，……", src, titles) == 1.0
    assert citation_exact("根据《道路交通安全法实施条例》第九十一条", src, titles) == 0.0  # right number, wrong law
    assert citation_exact("第九十一条", src, titles) == 0.0
    assert citation_exact("x", {}, titles) is None
    short = {"document": "最高法交通肇事刑事案件司法解释", "article": "第二条"}
    assert citation_exact(f"依照《{title_of(bm25_index, 'spc_traffic_crime')}》第二条", short, titles) == 1.0
    assert citation_known(citations("《道路交通安全法》第九十一条、第一百二十五条", titles), bm25_index) == 0.5
    assert citation_known(citations("《刑法》第一百三十三条", titles), bm25_index) == 0.0
    assert citation_known([], bm25_index) is None


def test_four_way_comparison_end_to_end(bm25_index, tiny_model, tiny_adapter, tmp_path):
    out = tmp_path / "rag-eval"
    rc = rag_compare(bm25_index, demo_eval(), model=str(tiny_model), adapters=[tiny_adapter], out_dir=out, k=2,
                     max_chars=80, max_new_tokens=6, batch_size=4, limit=4)
    names = [s.name for s in rc.comparison.systems]
    assert names == ["base", "base+rag", "tiny-ft", "tiny-ft+rag"]
    for s in rc.comparison.systems:
        assert len(s.answers) == 4 and s.summary["rag"] == s.name.endswith("+rag")
        assert s.summary["loss"] == s.summary["loss"]  # not NaN: every reference answer was scored
        for m in ("rouge_l", "citation", "citation_exact", "keywords"):
            assert m in s.summary
    # The +rag systems were shown passages, so their reference answers are scored after a longer prompt.
    assert rc.comparison.systems[0].summary["loss"] != rc.comparison.systems[1].summary["loss"]
    assert all(len(h) == 2 for h in rc.hits) and len(rc.target_shown) == 4
    hit, known = rc.shown_share()
    assert known == 4 and 0 <= hit <= 4
    for s in rc.comparison.systems:  # citation given the article was shown: only over those questions
        assert [p["citation_shown"] is None for p in s.per_example] == [not t for t in rc.target_shown]
    for name in ("rag.md", "rag.json", "retrieved.jsonl", "eval.html", "eval.md", "eval.json", "answers.jsonl"):
        assert (out / name).is_file(), name
    report = json.loads((out / "rag.json").read_text(encoding="utf-8"))
    assert report["retrieval"]["matched"] == 4 and set(report["systems"]) == set(names)
    md = (out / "rag.md").read_text(encoding="utf-8")
    assert "| bm25 |" in md and "tiny-ft+rag" in md and "passages shown" in md
    row = json.loads((out / "retrieved.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["target"] == "《中华人民共和国道路交通安全法》第九十一条" and len(row["shown"]) == 2
    print(rc.table())


def test_recall_without_sources_is_not_measured(bm25_index, tmp_path):
    f = tmp_path / "plain.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "酒后能开车吗？"},
                                          {"role": "assistant", "content": "不能。"}]}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    ret = retrieval_recall(bm25_index, read_records(f))
    assert ret.matched == 0 and ret.total == 1 and "no source.document" in ret.unmatched[0]
    assert "not measured" in ret.table().title


def test_adapters_rerank_as_the_answering_model(bm25_index, tiny_model, tiny_adapter, tmp_path):
    """With an LM lever in the recipe each adapter reranks with its own weights (as `rag ask` does): its own
    passages, its own retrieval row, its own shown-share; base + RAG keeps the base's."""
    from lorakit.rag.retrieve import Recipe
    out = tmp_path / "rag-eval"
    rc = rag_compare(bm25_index, demo_eval(), model=str(tiny_model), adapters=[tiny_adapter], out_dir=out, k=2,
                     max_chars=80, max_new_tokens=4, batch_size=4, limit=3, recipe=Recipe(mode="bm25", rerank=4))
    label = next(m for m in rc.retrieval.modes if m.endswith(" by tiny-ft"))
    assert label.startswith("bm25") and "rerank@4" in label
    passages, seen = rc.by_system["tiny-ft+rag"]
    assert len(passages) == 3 and all(len(h) == 2 for h in passages) and len(seen) == 3
    own = rc.comparison.systems[3]
    assert own.name == "tiny-ft+rag"
    assert [p["citation_shown"] is None for p in own.per_example] == [not t for t in seen]
    # the adapter's passages come from its own top 4, reranked
    row = json.loads((out / "retrieved.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(row["shown_by"]) == {"tiny-ft+rag"} and len(row["shown_by"]["tiny-ft+rag"]) == 2
    assert label in row["ranks"]
    report = json.loads((out / "rag.json").read_text(encoding="utf-8"))
    assert "shown to tiny-ft+rag" in report["source_article_shown"]
    assert "passages shown to tiny-ft+rag" in (out / "rag.md").read_text(encoding="utf-8")
