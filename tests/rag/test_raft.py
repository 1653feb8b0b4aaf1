"""The RAFT builder on the real traffic-law texts: gold/distractor mix, the prompt layout of `rag ask`, and
answers that begin with the label of the passage they rest on."""
from __future__ import annotations

import json

from lorakit.data.record import Conversation, Turn
from lorakit.rag.answer import citations, no_answer, rag_messages
from lorakit.rag.raft import build_raft, grounded_answer, raft_records

LAW = "中华人民共和国道路交通安全法"


def _rec(question: str, answer: str, source: dict) -> Conversation:
    return Conversation([Turn("user", question), Turn("assistant", answer)], source=source)


def _records(n: int = 40) -> list[Conversation]:
    """Questions in the project's words about articles 91 (drink driving) and 90 (other violations)."""
    out = []
    for i in range(n):
        art, ans = (("第九十一条", "根据《道路交通安全法》第九十一条，饮酒后驾驶的，暂扣驾驶证六个月。") if i % 2 else
                    ("第九十条", "违反道路通行规定的，按第九十条处警告或者罚款。"))
        out.append(_rec(f"问{i}：喝了酒开车会怎样？", ans, {"document": LAW, "article": art}))
    return out


def test_mix_of_gold_and_distractors_in_the_prompt_layout_of_rag_ask(bm25_index):
    rows, st = raft_records(bm25_index, _records(), k=3, p_gold=0.75, seed=1)
    raft = [r for r in rows if "raft" in r]
    plain = [r for r in rows if "raft" not in r]
    assert st.records == 40 and st.plain == len(plain) == 40 and st.raft == len(raft) == 40
    assert st.with_gold + st.without_gold == 40 and 20 <= st.with_gold <= 38 and st.without_gold >= 2
    chunks = {h: c for c in bm25_index.chunks for h in [f"《{c.document}》{c.article}"]}
    for r in raft:
        labels = r["raft"]["passages"]
        assert len(labels) == 3 and len(set(labels)) == 3
        gold = f"《{LAW}》{r['source']['article']}"
        assert (gold in labels) == r["raft"]["gold_shown"]
        # the user turn is exactly what `rag ask` shows for these passages
        from lorakit.rag.index import Hit
        hits = [Hit(bm25_index.chunks.index(chunks[x]), chunks[x], 0.0, p + 1) for p, x in enumerate(labels)]
        question = r["messages"][0]["content"].split("\n")[0].removeprefix("问题：")
        assert r["messages"][:-1] == rag_messages(question, hits)
        answer = r["messages"][-1]["content"]
        if r["raft"]["gold_shown"]:
            assert answer.startswith(f"根据{gold}，")
            assert answer.count("第九十一条") <= 1  # the record's own leading citation was replaced, not doubled
        else:
            assert answer == no_answer(question)


def test_answer_begins_with_the_label_and_keeps_its_own_words(bm25_index):
    hit = bm25_index.search("饮酒后驾驶机动车", 5, "bm25")
    hit = next(h for h in hit if h.chunk.article == "第九十一条" and h.chunk.document == LAW)
    same, added = grounded_answer("喝酒开车？", "根据《道路交通安全法》第九十一条，暂扣六个月。", hit, bm25_index.titles)
    assert same == f"根据《{LAW}》第九十一条，暂扣六个月。" and not added
    other, added = grounded_answer("喝酒开车？", "会被处罚，暂扣六个月。", hit, bm25_index.titles)
    assert other == f"根据《{LAW}》第九十一条，会被处罚，暂扣六个月。" and added
    assert [c.key for c in citations(other, bm25_index.titles)] == [(91, 0)]
    english, _ = grounded_answer("Drunk driving?", "The licence is suspended.", hit, bm25_index.titles)
    assert english.startswith(f"According to 《{LAW}》第九十一条, ")


def test_unfaithful_answers_and_unindexed_sources_stay_plain(bm25_index, tmp_path):
    recs = [_rec("酒驾罚多少？", "根据第九十一条，罚款九千九百元。", {"document": LAW, "article": "第九十一条"}),
            _rec("工伤怎么认定？", "看条例。", {"document": "工伤保险条例", "article": "第十四条"})]
    rows, st = raft_records(bm25_index, recs)
    assert st.raft == 0 and st.plain == 2 and st.no_source == 1 and len(st.unfaithful) == 1
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r.to_dict(), ensure_ascii=False)
                              for r in _records(6)) + "\n", encoding="utf-8")
    st = build_raft(bm25_index, data, tmp_path / "raft.jsonl", seed=0)
    assert st.raft == 6 and len((tmp_path / "raft.jsonl").read_text(encoding="utf-8").splitlines()) == 12


def test_plain_share_keeps_a_seeded_part_of_the_question_only_records(bm25_index):
    rows, st = raft_records(bm25_index, _records(), plain_share=0.25, seed=3)
    again, _ = raft_records(bm25_index, _records(), plain_share=0.25, seed=3)
    assert rows == again and 4 <= st.plain <= 18 and st.raft == 40
    import pytest

    from lorakit.errors import LorakitError
    with pytest.raises(LorakitError, match="plain records"):
        raft_records(bm25_index, _records(), plain_share=1.5)


def test_copies_draw_their_own_distractors_and_positions(bm25_index):
    rows, st = raft_records(bm25_index, _records(8), k=3, p_gold=1.0, seed=3, copies=3, keep_plain=False)
    assert st.raft == len(rows) == 24 and st.with_gold == 24 and st.plain == 0
    by_q: dict[str, list[tuple[str, ...]]] = {}
    for r in rows:
        by_q.setdefault(r["messages"][0]["content"].split("\n")[0], []).append(tuple(r["raft"]["passages"]))
    assert all(len(v) == 3 for v in by_q.values())
    # the draws differ: across the eight questions, copies of one question are not all the same passage list
    assert any(len(set(v)) > 1 for v in by_q.values())
    import pytest
    from lorakit.errors import LorakitError
    with pytest.raises(LorakitError, match="copies"):
        raft_records(bm25_index, _records(2), copies=0)


def test_retrieval_order_shows_the_passages_as_rag_ask_ranks_them(bm25_index):
    from lorakit.rag.retrieve import Recipe, Retriever
    recs = _records(12)
    rows, st = raft_records(bm25_index, recs, k=3, p_gold=1.0, seed=2, keep_plain=False, order="retrieval")
    ranked = Retriever(bm25_index, Recipe(learned=False)).rankings([r.prompt for r in recs])
    label = {i: f"《{c.document}》{c.article}" for i, c in enumerate(bm25_index.chunks)}
    by_q = {r["messages"][0]["content"].split("\n")[0].removeprefix("问题："): r for r in rows}
    for rec, order in zip(recs, ranked):
        row = by_q[rec.prompt]
        gold = f"《{LAW}》{rec.source['article']}"
        top = [label[i] for i, _, _ in order[:3]]
        shown = row["raft"]["passages"]
        if gold in top:  # retrieval found it: the passages are exactly its top 3, in its order
            assert shown == top
        else:  # it missed: the source is put in, the others keep retrieval's order
            assert gold in shown and [x for x in shown if x != gold] == [x for x in top if x != gold][:2]
    # drawn without the source: the top 3 other passages, in retrieval's order
    rows, _ = raft_records(bm25_index, recs[:4], k=3, p_gold=0.0, keep_plain=False)
    by_q = {r["messages"][0]["content"].split("\n")[0].removeprefix("问题："): r for r in rows}
    for rec, order in zip(recs[:4], ranked[:4]):
        gold = f"《{LAW}》{rec.source['article']}"
        assert by_q[rec.prompt]["raft"]["passages"] == [label[i] for i, _, _ in order if label[i] != gold][:3]


def test_judge_adds_relevance_judgements_to_the_mix(bm25_index):
    import pytest

    from lorakit.errors import LorakitError
    rows, st = raft_records(bm25_index, _records(10), k=3, seed=1)
    judged, st2 = raft_records(bm25_index, _records(10), k=3, seed=1, judge=3)
    assert st.judge == 0 and st2.judge == 10 * 4 and len(judged) == len(rows) + 40
    marks = [r["judge"]["relevant"] for r in judged if "judge" in r]
    assert marks.count(True) == 10 and marks.count(False) == 30
    # the RAFT and plain records are the same draws with or without judgements
    strip = lambda rs: sorted(json.dumps(r, ensure_ascii=False) for r in rs if "judge" not in r)  # noqa: E731
    assert strip(judged) == strip(rows)
    with pytest.raises(LorakitError, match="judge"):
        raft_records(bm25_index, _records(2), judge=-1)
