"""`lorakit data pairs`: which answers become rejected replies (checkable defects only), on fixed answers."""
from __future__ import annotations

import json

from lorakit.data.formats import read_records, write_records
from lorakit.data.pairs import defect, make_pairs
from lorakit.data.record import Conversation, Turn
from lorakit.data.split import split

REF = "根据《道路交通安全法》第九十一条，喝酒后开车的，驾驶证暂扣六个月，另罚一千元到二千元。"


def test_defects_are_the_checkable_ones():
    assert defect("依照第八十条，罚款二百元。", REF, "第九十一条")[0] == "wrong_article"
    assert defect("会被罚款，具体看情况。", REF, "第九十一条") == ("no_article", "cites no article")
    reason, detail = defect("根据第九十一条，暂扣三个月驾驶证。", REF, "第九十一条")
    assert reason == "unsupported_figures" and "三个月" in detail
    # the same figures written otherwise are supported: 半年 = 六个月, 2000元 = 二千元
    assert defect("根据第九十一条，暂扣半年驾驶证，罚款1000元至2000元。", REF, "第九十一条") is None


def test_make_pairs_keeps_defective_distinct_answers(tmp_path):
    recs = [Conversation([Turn("user", f"酒驾第{i}次？"), Turn("assistant", REF)],
                         source={"document": "道路交通安全法", "article": "第九十一条"}) for i in range(3)]
    answers = iter(["依照第八十条处理。", "依照第八十条处理。",  # a repeated sample counts once
                    "根据第九十一条，暂扣六个月驾驶证。", "没关系。",
                    "根据第九十一条，罚款五千元。", "根据第九十一条，罚款五千元。"])
    made, counts, clean = make_pairs(recs, lambda prompts: [next(answers) for _ in prompts], samples=2)
    assert [p.rejected[0].content for p in made] == ["依照第八十条处理。", "没关系。", "根据第九十一条，罚款五千元。"]
    assert dict(counts) == {"wrong_article": 1, "no_article": 1, "unsupported_figures": 1} and clean == 1
    assert all(p.chosen[0].content == REF and p.meta["rejected_because"] for p in made)
    out = write_records(tmp_path / "pairs.jsonl", made, "preference")
    row = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert set(row) >= {"prompt", "chosen", "rejected", "source", "rejected_because"}
    assert read_records(out)[0].rejected[0].content == "依照第八十条处理。"
    res = split(out, tmp_path / "split", eval=1, seed=0, threshold=0.99, by_source=False)  # in their own form
    assert sum(res.sizes.values()) == 3 and res.paths["train"].suffix == ".jsonl"
    assert read_records(res.paths["eval"])[0].rejected
