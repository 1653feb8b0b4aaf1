"""Replay: seeded general prompts, the base model's answers as records (resumable), mixed into training at a ratio."""
import json

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.data import replay as R
from lorakit.errors import LorakitError


def test_prompts_are_seeded_distinct_and_spread():
    templates, _ = R.load_templates()
    a = R.replay_prompts(40, seed=3)
    assert a == R.replay_prompts(40, seed=3)
    assert a != R.replay_prompts(40, seed=4)
    assert len({p["prompt"] for p in a}) == 40
    assert {p["template"] for p in a} == {t["id"] for t in templates}  # every kind of request is asked
    assert {p["lang"] for p in a} == {"en", "zh"}
    assert all("{" not in p["prompt"] for p in a)
    with pytest.raises(LorakitError, match="distinct prompts"):
        R.replay_prompts(10 ** 6)


def test_cut_answers_keep_their_full_sentences():
    assert R.complete_part("Done. Fine.", cut=False) == "Done. Fine."
    assert R.complete_part("第一句。第二句还没", cut=True) == "第一句。"
    assert R.complete_part("1. eggs\n2. milk\n3. bre", cut=True) == "1. eggs\n2. milk"
    assert R.complete_part("no end at all", cut=True) is None
    assert R.complete_part("   ", cut=False) is None


def test_mix_replay_ratio_is_seeded():
    train, pool = list(range(20)), [f"r{i}" for i in range(10)]
    mixed, k = R.mix_replay(train, pool, 0.25, seed=1)
    assert k == 5 and mixed[:20] == train and set(mixed[20:]) <= set(pool)
    assert R.mix_replay(train, pool, 0.25, seed=1) == (mixed, k)
    assert R.mix_replay(train, pool, 2.0, seed=1)[1] == 10  # the file holds fewer: all of it


def test_replay_writes_records_and_resumes(tiny_model, tmp_path):
    out = tmp_path / "replay.jsonl"
    prompts = R.replay_prompts(3, seed=0)
    partial = out.with_name(out.name + ".partial")  # as an interrupted run leaves it
    partial.write_text(json.dumps({**prompts[0], "answer": "A kept answer.", "cut": False}) + "\n", encoding="utf-8")
    res = R.replay(str(tiny_model), out, n=3, seed=0, max_new_tokens=6, batch_size=2)
    assert res.resumed == 1 and res.records + res.dropped == 3 and not partial.exists()
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["messages"] == [{"role": "user", "content": prompts[0]["prompt"]},
                                   {"role": "assistant", "content": "A kept answer."}]
    assert all(r["source"]["replay"] and r["source"]["seed"] == 0 for r in rows)
    from lorakit.data.formats import read_records
    assert len(read_records(out)) == res.records  # what train reads back


def test_training_mixes_replay_in(tiny_model, tmp_path):
    from lorakit.config import TrainConfig
    from lorakit.train.recipe import load_records, train
    qa_file = tmp_path / "train.jsonl"
    qa_file.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"第{i}题：超速会怎样？"},
                                                        {"role": "assistant", "content": f"罚款{100 + i}元。"}]},
                                          ensure_ascii=False) + "\n" for i in range(24)), encoding="utf-8")
    pool = tmp_path / "replay.jsonl"
    pool.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Tell me about day {i}."},
                                                     {"role": "assistant", "content": f"Day {i} was calm."}],
                                        "source": {"replay": "t"}}) + "\n" for i in range(10)), encoding="utf-8")
    cfg = TrainConfig(model=str(tiny_model), data=str(qa_file), runs_dir=str(tmp_path / "runs"), name="r",
                      eval_ratio=0.25, max_steps=1, precision="fp32", replay={"data": str(pool), "ratio": 0.5})
    recs, evals, k = load_records(cfg)
    assert (len(recs), len(evals), k) == (18 + 9, 6, 9)  # 24 records: 6 held out, then 9 replay for 18
    assert not any(r.source.get("replay") for r in evals)
    summary = train(cfg).summary
    assert summary["records"] == {"train": 27, "eval": 6, "replay": 9}


def test_replay_config_errors(tmp_path):
    from lorakit.config import TrainConfig, build
    with pytest.raises(LorakitError, match="replay.ratio"):
        build(TrainConfig, None, {"data": "x.jsonl", "replay": {"data": "r.jsonl", "ratio": 0}})
    with pytest.raises(LorakitError, match="unknown key 'replay.share'"):
        build(TrainConfig, None, {"data": "x.jsonl", "replay": {"data": "r.jsonl", "share": 0.2}})


def test_cli_data_replay(tiny_model, tmp_path):
    out = tmp_path / "r.jsonl"
    first = R.replay_prompts(2, seed=0)[0]
    out.with_name("r.jsonl.partial").write_text(json.dumps({**first, "answer": "Sure.", "cut": False}) + "\n")
    res = CliRunner().invoke(app, ["data", "replay", "--model", str(tiny_model), "--n", "2", "--out", str(out),
                                   "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert "replay records" in res.output and "1 resumed" in res.output and "--replay.data" in res.output
    assert out.exists()


def test_replay_with_no_usable_answer_says_so(tiny_model, tmp_path):
    out = tmp_path / "r.jsonl"
    out.with_name("r.jsonl.partial").write_text(
        json.dumps({**R.replay_prompts(1, seed=0)[0], "answer": "cut mid", "cut": True}) + "\n")
    res = CliRunner().invoke(app, ["data", "replay", "--model", str(tiny_model), "--n", "1", "--out", str(out)])
    assert res.exit_code == 2 and "no usable answer" in res.output and "--max-new-tokens" in res.output
    assert not out.exists()
