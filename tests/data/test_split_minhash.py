"""Near-duplicate search and leak-free splits."""
from __future__ import annotations

import random

import numpy as np
import pytest

from lorakit.data import minhash
from lorakit.data.build import build
from lorakit.data.check import check
from lorakit.data.formats import read_records
from lorakit.data.record import Conversation, Turn
from lorakit.data.split import parse_share, split, split_records
from lorakit.errors import LorakitError


def test_normalize_folds_width_case_punctuation():
    assert minhash.normalize("醉驾怎么罚？ ＡＢＣ １２３,  Hello!") == "醉驾怎么罚abc123hello"


def test_shingles_and_short_texts():
    sh = minhash.shingle(["abcd", "", "ab", "abc"], 3)
    assert list(np.diff(sh.offsets)) == [2, 0, 1, 1]
    assert sh.of(0)[0] == sh.of(3)[0] != sh.of(0)[1]  # 'abc' hashes the same wherever it is; 'bcd' differs


def test_near_duplicates_finds_edits_not_strangers():
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
    base = ["".join(rng.choices(chars, k=80)) for _ in range(300)]
    edited = []
    for t in base[:50]:
        s = list(t)
        s[rng.randrange(len(s))] = "某"
        edited.append("".join(s))
    pairs = minhash.near_duplicates(base + edited, threshold=0.8)
    found = {(i, j) for i, j, _ in pairs}
    assert found == {(k, 300 + k) for k in range(50)}
    assert all(0.8 <= sim < 1 for *_, sim in pairs)


def test_near_duplicates_sides_and_skip():
    texts = ["交通信号灯由红灯绿灯黄灯组成", "交通信号灯由红灯绿灯黄灯组成。", "完全无关的内容在这里出现"]
    assert [(i, j) for i, j, _ in minhash.near_duplicates(texts)] == [(0, 1)]
    assert minhash.near_duplicates(texts, side=np.array([0, 0, 1])) == []
    assert minhash.near_duplicates(texts, skip=np.array([False, True, False])) == []


def test_groups_union_find():
    assert minhash.groups(5, [(0, 3), (3, 4)]).tolist() == [0, 1, 2, 0, 0]


def _conv(q, a, article=None):
    return Conversation([Turn("user", q), Turn("assistant", a)],
                        source={"document": "doc", "article": article} if article else {})


def test_split_keeps_groups_together_and_is_seeded():
    recs = [_conv(f"question {i} about topic {i * 7 % 13}", f"answer number {i} with details {i * 3}") for i in range(200)]
    recs += [_conv("q a1", "a", "第一条"), _conv("q a2", "b", "第一条"), _conv("q a3", "c", "第一条")]
    recs += [_conv("question 5 about topic 9", "answer number 5 with details 15.")]  # near twin of record 5
    splits, gid = split_records(recs, eval=0.2, test=10, seed=3)
    assert sum(len(v) for v in splits.values()) == len(recs)
    assert len(splits["test"]) == 10 and abs(len(splits["eval"]) - 41) <= 3
    where = {id(r): k for k, v in splits.items() for r in v}
    assert len({where[id(r)] for r in recs[200:203]}) == 1
    assert where[id(recs[5])] == where[id(recs[203])]
    again, _ = split_records(recs, eval=0.2, test=10, seed=3)
    assert [[id(r) for r in v] for v in again.values()] == [[id(r) for r in v] for v in splits.values()]
    other, _ = split_records(recs, eval=0.2, test=10, seed=4)
    assert [id(r) for r in other["eval"]] != [id(r) for r in splits["eval"]]


def test_split_law_records_without_leakage(laws, tmp_path):
    built = tmp_path / "law.jsonl"
    build([laws / "road_traffic_safety_law_2021.md"], built, templates=3)
    res = split(built, tmp_path / "splits", eval=0.1, test=0.1, seed=0)
    assert set(res.paths) == {"train", "eval", "test"} and sum(res.sizes.values()) == 372
    train = read_records(res.paths["train"])
    for name in ("eval", "test"):
        held = read_records(res.paths[name])
        assert not {r.source["article"] for r in held} & {r.source["article"] for r in train}
        rep = check(res.paths["train"], eval_path=res.paths[name])
        assert not [f for f in rep.findings if f.code in ("leak", "near_leak")]


def test_split_shares():
    assert parse_share("0.1") == 0.1 and parse_share("200") == 200 and parse_share("0") == 0
    with pytest.raises(LorakitError):
        parse_share("ten")
    with pytest.raises(LorakitError, match="nothing to train"):
        split_records([_conv("a", "b"), _conv("c", "d")], eval=1, test=1)
