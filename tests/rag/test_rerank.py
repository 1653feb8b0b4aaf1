"""LM reranking and LM query rewriting: shapes, padding-proof batching, permutations (tiny random model); one
check of what the real default model does with a drunk-driving question."""
from __future__ import annotations

import numpy as np
import pytest

from lorakit.errors import LorakitError
from lorakit.models import Precision, load_model, load_tokenizer
from lorakit.rag.rerank import LMReranker, rerank
from lorakit.rag.rewrite import STYLES, rewrite_query

FP32 = Precision("cpu", "float32", None, "test")
LAW = "中华人民共和国道路交通安全法"
DRUNK = "喝了酒开车被交警查到了会怎么样？"


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    return load_model(tiny_model, FP32), load_tokenizer(tiny_model)


def _texts(bm25_index, n=5):
    return [f"{c.document}\n{c.text[:40 + 37 * i]}" for i, c in enumerate(bm25_index.chunks[80:80 + n])]


def test_scores_have_one_finite_value_per_passage(tiny_lm, bm25_index):
    model, tok = tiny_lm
    rr = LMReranker(model, tok, FP32, batch_size=2)
    s = rr.scores("醉酒驾驶机动车要承担什么责任？", _texts(bm25_index))
    assert s.shape == (5,) and s.dtype == np.float32 and np.isfinite(s).all()
    assert np.isfinite(rr.scores("What happens to a drunk driver?", _texts(bm25_index, 3))).all()
    assert rr.scores("问题", []).shape == (0,)
    assert rr.zh_ids[0] != rr.zh_ids[1]  # 是 and 否 start with different tokens, so the margin means something


def test_a_passage_scores_the_same_alone_or_in_a_padded_batch(tiny_lm, bm25_index):
    """Left padding and position ids must be right: the passages differ in length, so batches are padded."""
    model, tok = tiny_lm
    texts = _texts(bm25_index, 6)
    q = "酒后驾驶会受到什么处罚？"
    batched = LMReranker(model, tok, FP32, batch_size=4).scores(q, texts)
    alone = np.array([LMReranker(model, tok, FP32, batch_size=1).scores(q, [t])[0] for t in texts])
    assert len({len(tok(t)["input_ids"]) for t in texts}) == len(texts)
    np.testing.assert_allclose(batched, alone, atol=1e-4, rtol=0)


def test_answer_rows_in_fp32_equal_the_full_logits(tiny_lm, bm25_index, monkeypatch):
    """The decoder + answer-rows path reads the same margins as the model's own logits (logits_to_keep=1)."""
    model, tok = tiny_lm
    texts, q = _texts(bm25_index, 4), "酒后驾驶会受到什么处罚？"
    rr = LMReranker(model, tok, FP32, batch_size=4)
    fast = rr.scores(q, texts)
    monkeypatch.setattr(model, "get_decoder", lambda: None)
    np.testing.assert_allclose(fast, rr.scores(q, texts), atol=1e-4, rtol=0)


def test_passages_are_title_plus_cut_text(tiny_lm, bm25_index):
    model, tok = tiny_lm
    chunk = max(bm25_index.chunks, key=lambda c: len(c.text))
    p = LMReranker(model, tok, FP32, max_chars=50).passage(chunk)
    assert p.startswith(chunk.document + "\n" + chunk.text[:20]) and p.endswith("……")
    assert len(p) <= len(chunk.document) + 1 + 50 + 2
    prompt = LMReranker(model, tok, FP32).prompt("酒驾怎么罚？", p)
    assert "酒驾怎么罚？" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_rerank_returns_a_permutation_of_the_candidates(tiny_lm, bm25_index):
    model, tok = tiny_lm
    rr = LMReranker(model, tok, FP32, batch_size=3, max_chars=80)
    q = "醉酒驾驶机动车要承担什么责任？"
    cands = [h.id for h in bm25_index.search(q, 7, "bm25")]
    order = rerank(bm25_index, q, cands, rr)
    assert sorted(order) == sorted(cands)
    s = rr.scores(q, [rr.passage(bm25_index.chunks[i]) for i in cands])
    assert order == [cands[p] for p in np.argsort(-s, kind="stable")]  # weight 0: the LM's order alone
    assert rerank(bm25_index, q, cands, rr, keep_order_weight=1.0) == cands  # weight 1: the first stage's
    assert sorted(rerank(bm25_index, q, cands, rr, keep_order_weight=0.5)) == sorted(cands)
    assert rerank(bm25_index, q, cands[:1], rr) == cands[:1] and rerank(bm25_index, q, [], rr) == []


def test_rewrite_keeps_the_question_first(tiny_lm):
    model, tok = tiny_lm
    qs = ["酒后驾驶会受到什么处罚？", "What happens to a drunk driver?", "闯红灯扣几分？"]
    for style in STYLES:
        out = rewrite_query(qs, model, tok, FP32, style=style, max_new_tokens=6, batch_size=2)
        assert len(out) == len(qs)
        for q, text in zip(qs, out):
            assert text == q or text.startswith(q + "\n")
    assert rewrite_query([], model, tok, FP32) == []
    with pytest.raises(LorakitError, match="unknown query rewrite"):
        rewrite_query(qs, model, tok, FP32, style="poem")


@pytest.mark.real_model
def test_real_model_answers_the_yes_no_prompt_and_ranks_without_ties(default_model, bm25_index):
    """On the real model the margin is read where the model really answers 是/否, and 20 passages get 20
    distinct scores (bf16 logits had tied them on 4 values). Article 91 in the top 3 is NOT asserted: the 0.5B
    model puts it 9th of BM25's 20 for this question, and ranks the source article no better than chance on
    the 45 demo questions (see lorakit.rag.rerank)."""
    import torch

    from lorakit.rag.answer import load_generator
    model, tok, precision = load_generator(str(default_model))
    rr = LMReranker(model, tok, precision)
    cands = [h.id for h in bm25_index.search(DRUNK, 20, "bm25", learned=False)]
    art91 = next(i for i in cands if bm25_index.chunks[i].document == LAW and bm25_index.chunks[i].number == 91)
    ids = tok(rr.prompt(DRUNK, rr.passage(bm25_index.chunks[art91])), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        p = model(**ids, logits_to_keep=1).logits[0, -1].float().softmax(-1)
    assert float(p[rr.zh_ids[0]].sum() + p[rr.zh_ids[1]].sum()) > 0.9  # the next token is 是 or 否
    s = rr.scores(DRUNK, [rr.passage(bm25_index.chunks[i]) for i in cands])
    assert np.isfinite(s).all() and len(set(np.round(s, 5).tolist())) == len(cands)
    order = rerank(bm25_index, DRUNK, cands, rr)
    assert sorted(order) == sorted(cands) and order[0] == cands[int(np.argmax(s))]


def test_judge_records_teach_the_layout_the_reranker_reads(tiny_lm, bm25_index):
    """Training judgements: per question its source article answered 是 and N hard negatives 否, in exactly the
    prompt `LMReranker` scores (rendered with the generation prompt, the judgement is the next token)."""
    from lorakit.data.record import Conversation, Turn
    from lorakit.rag.ingest import source_chunks
    from lorakit.rag.rerank import judge_records
    from lorakit.rag.retrieve import Recipe, Retriever
    model, tok = tiny_lm
    recs = [Conversation([Turn("user", DRUNK), Turn("assistant", "暂扣驾驶证六个月。")],
                         source={"document": LAW, "article": "第九十一条"}),
            Conversation([Turn("user", "What does the law say about driving after 饮酒, first offence?"),
                          Turn("assistant", "No.")],
                         source={"document": LAW, "article": "第二十二条"}),
            Conversation([Turn("user", "问题没有出处"), Turn("assistant", "……")])]
    ranked = Retriever(bm25_index, Recipe(mode="bm25", learned=False)).rankings([r.prompt for r in recs])
    rows = judge_records(bm25_index, recs, ranked, negatives=4, hard=2, seed=3)
    assert len(rows) == 2 * 5  # 1 relevant + 4 not per question with an indexed source; none for the third
    rr = LMReranker(model, tok, FP32)
    gold = source_chunks(recs[0].source, bm25_index.chunks)[0][0]
    zh = [r for r in rows if r["messages"][1]["content"].startswith("用户问题：" + DRUNK)]
    assert [r["messages"][-1]["content"] for r in zh].count("是") == 1 and len(zh) == 5
    yes = next(r for r in zh if r["judge"]["relevant"])
    assert yes["messages"][:-1] == rr.messages(DRUNK, rr.passage(bm25_index.chunks[gold]))
    rendered = tok.apply_chat_template(yes["messages"][:-1], add_generation_prompt=True, tokenize=False)
    assert rendered == rr.prompt(DRUNK, rr.passage(bm25_index.chunks[gold]))
    # the hard negatives are the first stage's best non-source articles, in its order
    others = [i for i, _, _ in ranked[0] if i != gold]
    labels = [r["judge"]["passage"] for r in zh if not r["judge"]["relevant"]]
    first_two = [f"《{bm25_index.chunks[i].document}》{bm25_index.chunks[i].article}" for i in others[:2]]
    assert labels[:2] == first_two
    en = [r for r in rows if r["messages"][1]["content"].startswith("User question")]
    assert sorted(r["messages"][-1]["content"] for r in en) == ["no"] * 4 + ["yes"]
    assert judge_records(bm25_index, recs, ranked, negatives=0) == []
