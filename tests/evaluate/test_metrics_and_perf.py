import json

import pytest

from lorakit.evaluate import metrics as M


def test_rouge_bleu_chinese_words():
    ref = "根据《道路交通安全法》第九十一条，饮酒驾驶暂扣驾驶证六个月。"
    assert M.rouge_l(ref, ref) == pytest.approx(1.0)
    assert M.bleu4(ref, ref) == pytest.approx(1.0)
    assert 0 < M.rouge_l("饮酒驾驶会被暂扣驾驶证", ref) < 1
    assert M.rouge_l("完全无关的句子", ref) < 0.2


def test_width_and_punctuation_do_not_matter():
    assert M.exact_match("记１２分！", "记12分") == 1.0
    assert M.keyword_recall("一次记１２分", ["12分", "满分"]) == 0.5
    assert M.keyword_recall("x", []) is None


def test_article_citations():
    assert M.articles("依据第九十一条和第 22 条、第一百二十四条") == {91, 22, 124}
    assert M.citation_hit("根据第九十一条……", "第九十一条") == 1.0
    assert M.citation_hit("根据第九十条……", "第九十一条") == 0.0
    assert M.citation_hit("anything", None) is None
    assert M.chinese_numeral("一百零七") == 107 and M.chinese_numeral("十二") == 12


def test_perf_base_adapter_merged(tmp_path):
    from lorakit.config import TrainConfig
    from lorakit.evaluate.bench import perf
    from lorakit.models.tiny import build_tiny
    from lorakit.serve.export import merge_and_export
    from lorakit.train.recipe import train
    model = build_tiny(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"问题{i}"},
                                                     {"role": "assistant", "content": f"回答{i}"}]},
                                       ensure_ascii=False) + "\n" for i in range(8)), encoding="utf-8")
    run = train(TrainConfig(model=str(model), data=str(data), runs_dir=str(tmp_path / "runs"), name="r",
                            max_steps=2, precision="fp32")).run_dir
    merge_and_export(str(model), run, tmp_path / "merged", parity=False)
    results = perf(str(model), data, adapter=run, merged=tmp_path / "merged", n=2, max_new_tokens=4)
    assert [r.name for r in results] == ["base", "adapter", "merged"]
    for r in results:
        assert r.latency_s > 0 and 0 < r.ttft_s <= r.latency_s and 1 <= r.new_tokens <= 4 and r.peak_mb > 0


def _full_logits_losses(model, tokenizer, conversations, *, max_length, batch_size):
    """Per-example answer loss the way it was computed before `answer_loss` kept only trained positions: the
    full (batch × length × vocabulary) logits, shifted, and F.cross_entropy over every position."""
    import torch
    import torch.nn.functional as F

    from lorakit.data.tokenize import assistant_spans
    rows = [assistant_spans(tokenizer, m, max_length=max_length) for m in conversations]
    per, total, count = [], 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(i) for i, _ in chunk)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk])
        att = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk])
        lab = torch.tensor([[t if k else -100 for t, k in zip(i, m)] + [-100] * (width - len(i)) for i, m in chunk])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=att).logits.float()
        shift, target = logits[:, :-1], lab[:, 1:]
        lp = F.cross_entropy(shift.reshape(-1, shift.size(-1)), target.reshape(-1), ignore_index=-100,
                             reduction="none").view(target.shape)
        n = (target != -100).sum(1)
        per += [s / c if c else float("nan") for s, c in zip(lp.sum(1).tolist(), n.tolist())]
        total += lp.sum().item()
        count += int(n.sum())
    return total / count, per


def test_answer_loss_equals_the_full_logits_loss(tiny_model):
    import math

    from lorakit.data.tokenize import assistant_spans
    from lorakit.evaluate.generate import answer_loss
    from lorakit.models import Precision, load_model, load_tokenizer
    from lorakit.quickstart import demo_file

    fp32 = Precision("cpu", "float32", None, "test")
    model, tok = load_model(tiny_model, fp32), load_tokenizer(tiny_model)
    demo = [json.loads(ln) for ln in demo_file("train.jsonl").read_text(encoding="utf-8").splitlines()[:40]]
    passages = "\n\n".join(r["messages"][-1]["content"] for r in demo)  # a prompt with "passages", as +rag has

    def chat(*turns):
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]

    max_length = 1000
    conversations = [
        chat("酒驾怎么罚？", "罚款。"),
        chat(f"参考资料：\n{passages[:300]}\n\n问题：醉驾要承担什么责任？", demo[0]["messages"][-1]["content"]),
        chat("驾照扣分了怎么办？", "参加学习。", "满分呢？", "重新考试。"),  # two trained spans, apart
        chat(demo[1]["messages"][0]["content"], demo[1]["messages"][-1]["content"]),
        chat(f"参考资料：\n{passages[:len(passages) // 3]}\n\n问题：闯红灯记几分？", "记六分。"),  # a long prompt
    ]
    rows = [assistant_spans(tok, m, max_length=max_length) for m in conversations]
    lengths = [len(i) for i, _ in rows]
    assert len(set(lengths)) == len(lengths)  # all different lengths, so batches are padded
    assert 600 < lengths[4] < max_length and sum(rows[4][1]) > 0  # long, and its answer not cut
    assert lengths[4] - rows[4][1].index(1) < 20  # the trained tokens sit at the very end
    for batch_size in (2, 5):
        loss, per = answer_loss(model, tok, conversations, max_length=max_length, precision=fp32,
                                batch_size=batch_size)
        want_loss, want = _full_logits_losses(model, tok, conversations, max_length=max_length,
                                              batch_size=batch_size)
        assert len(per) == len(conversations)
        for got, ref in zip(per, want):
            assert math.isfinite(got) and abs(got - ref) < 1e-5, (batch_size, per, want)
        assert abs(loss - want_loss) < 1e-5
    # each conversation alone (no padding) gives the same per-example loss as in a padded batch
    alone = [answer_loss(model, tok, [c], max_length=max_length, precision=fp32)[1][0] for c in conversations]
    assert all(abs(a - b) < 1e-5 for a, b in zip(alone, per))
    # the mean is per trained token, not per example
    counts = [sum(m[1:]) for _, m in rows]
    assert abs(loss - sum(p * c for p, c in zip(per, counts)) / sum(counts)) < 1e-5


def test_answer_loss_when_no_answer_token_is_left(tiny_model):
    """A prompt longer than max_length leaves nothing to score: NaN for it, and the mean over the others."""
    import math

    from lorakit.evaluate.generate import answer_loss
    from lorakit.models import Precision, load_model, load_tokenizer

    fp32 = Precision("cpu", "float32", None, "test")
    model, tok = load_model(tiny_model, fp32), load_tokenizer(tiny_model)
    cut = [{"role": "user", "content": "道路交通安全" * 200}, {"role": "assistant", "content": "记六分。"}]
    ok = [{"role": "user", "content": "闯红灯记几分？"}, {"role": "assistant", "content": "记六分。"}]
    loss, per = answer_loss(model, tok, [cut], max_length=64, precision=fp32)
    assert math.isnan(loss) and math.isnan(per[0])
    loss, per = answer_loss(model, tok, [cut, ok], max_length=64, precision=fp32, batch_size=1)
    assert math.isnan(per[0]) and math.isfinite(per[1]) and loss == per[1]
    both, per2 = answer_loss(model, tok, [cut, ok], max_length=64, precision=fp32, batch_size=2)
    assert math.isnan(per2[0]) and abs(per2[1] - per[1]) < 1e-5 and abs(both - loss) < 1e-5


def test_token_batches_hold_rows_and_padded_tokens():
    from lorakit.evaluate.generate import token_batches

    lengths = [40, 1000, 60, 900, 50, 30, 5000]
    batches = token_batches(lengths, batch_size=3, batch_tokens=2000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row once
    assert batches[0] == [6]  # over the budget alone: it goes alone, first (longest first)
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 2000)
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert [sorted(b) for b in batches[1:]] == [[1, 3], [0, 2, 4], [5]]
    # without a token budget: rows only
    assert [len(b) for b in token_batches(lengths, batch_size=4, batch_tokens=None)] == [4, 3]


def test_generate_answers_keep_their_order_whatever_the_batches(tiny_model):
    """Batches of other widths and row counts (`token_batches`) give each conversation its own answer back."""
    from lorakit.evaluate.generate import generate
    from lorakit.models import Precision, load_model, load_tokenizer

    fp32 = Precision("cpu", "float32", None, "test")
    model, tok = load_model(tiny_model, fp32), load_tokenizer(tiny_model)
    convs = [[{"role": "user", "content": q}] for q in
             ["酒驾怎么罚？", "驾照扣分了怎么办？" * 6, "闯红灯记几分？" * 3, "超速", "高速公路上倒车会怎样？" * 10]]
    alone = [generate(model, tok, [c], max_new_tokens=6, precision=fp32)[0] for c in convs]
    for batch_size, batch_tokens in [(8, None), (2, None), (8, 120)]:
        assert generate(model, tok, convs, max_new_tokens=6, precision=fp32, batch_size=batch_size,
                        batch_tokens=batch_tokens) == alone, (batch_size, batch_tokens)
