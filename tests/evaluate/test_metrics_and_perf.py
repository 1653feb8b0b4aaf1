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
    merge_and_export(str(model), run, tmp_path / "merged")
    results = perf(str(model), data, adapter=run, merged=tmp_path / "merged", n=2, max_new_tokens=4)
    assert [r.name for r in results] == ["base", "adapter", "merged"]
    for r in results:
        assert r.latency_s > 0 and 0 < r.ttft_s <= r.latency_s and 1 <= r.new_tokens <= 4 and r.peak_mb > 0
