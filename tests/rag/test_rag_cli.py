"""`lorakit rag index | search | ask | eval` end to end (thin commands over the functions tested beside)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from lorakit.cli import app

from rag_paths import LAW_2021, demo_eval


def run(*args):
    return CliRunner().invoke(app, ["rag", *map(str, args)])


def test_index_search_and_retrieval_eval(laws, tmp_path):
    out = tmp_path / "idx"
    r = run("index", laws / LAW_2021, laws / "violation_points_rules_2021.md", "--out", out, "--no-dense")
    assert r.exit_code == 0, r.output
    assert "indexed 161 chunks of 2 document(s)" in r.output and "no embeddings" in r.output
    r = run("search", out, "醉酒驾驶机动车怎么处罚", "-k", "3")
    assert r.exit_code == 0, r.output
    first = next(ln for ln in r.output.splitlines() if ln.startswith(" 1 "))
    assert "《中华人民共和国道路交通安全法》第九十一条" in first and r.output.startswith("bm25 · ")
    r = run("eval", out, "--data", demo_eval(), "--retrieval-only")
    assert r.exit_code == 0, r.output
    assert "recall@5" in r.output and "of 45 questions" in r.output


def test_user_errors_are_one_paragraph(tmp_path, bm25_index):
    r = run("search", tmp_path / "nowhere", "酒驾")
    assert r.exit_code == 2 and "no index folder here" in r.output and "lorakit rag index" in r.output
    r = run("search", bm25_index.path, "酒驾", "--mode", "semantic")
    assert r.exit_code == 2 and "unknown retrieval mode 'semantic'" in r.output
    r = run("search", bm25_index.path, "酒驾", "--mode", "dense")
    assert r.exit_code == 2 and "has no embeddings" in r.output
    (tmp_path / "empty.md").write_text("", encoding="utf-8")
    r = run("index", tmp_path / "empty.md", "--out", tmp_path / "i")
    assert r.exit_code == 2 and "empty.md" in r.output and "empty" in r.output
    assert not (tmp_path / "i").exists()
    assert "Traceback" not in r.output


def test_ask_and_four_way_eval_with_the_tiny_model(bm25_index, tiny_model, tiny_adapter, tmp_path):
    r = run("ask", bm25_index.path, "醉酒驾驶机动车要承担什么责任？", "--model", tiny_model, "--adapter", tiny_adapter,
            "-k", "2", "--max-new-tokens", "4", "--max-chars", "80")
    assert r.exit_code == 0, r.output
    assert "passages shown" in r.output and "[1] 《" in r.output
    out = tmp_path / "eval"
    r = run("eval", bm25_index.path, "--data", demo_eval(), "--model", tiny_model, "--adapter", tiny_adapter,
            "--out", out, "--limit", "2", "-k", "2", "--max-new-tokens", "4", "--max-chars", "80")
    assert r.exit_code == 0, r.output
    assert "tiny-ft+rag" in r.output and "recall@1" in r.output
    assert set(json.loads((out / "rag.json").read_text(encoding="utf-8"))["systems"]) == {
        "base", "base+rag", "tiny-ft", "tiny-ft+rag"}


def test_index_with_learn_and_retrieval_only_reports(laws, tmp_path):
    import pytest

    from lorakit.quickstart import demo_file
    idx, reports = tmp_path / "idx", tmp_path / "reports"
    r = run("index", laws, "--out", idx, "--no-dense", "--learn", demo_file("train.jsonl"))
    assert r.exit_code == 0, r.output
    learned = json.loads((idx / "meta.json").read_text(encoding="utf-8"))["learned"]
    assert learned["records"] == 172 and 0 < learned["articles"] <= 172 and learned["terms"] > 0
    said = " ".join(r.output.split())  # the console may wrap the line
    assert "indexed 582 chunks of 8 document(s)" in said
    assert (f"learned from 172 Q&A records ({learned['articles']} articles, {learned['terms']} mapped words)"
            in said)
    assert (idx / "learned.json").is_file() and (idx / "bm25_learned.npz").is_file()

    r = run("eval", idx, "--data", demo_eval(), "--retrieval-only", "--out", reports)
    assert r.exit_code == 0, r.output
    assert "bm25 + learned" in r.output and "rag.md" in r.output
    assert sorted(p.name for p in reports.iterdir()) == ["rag.json", "rag.md", "retrieved.jsonl"]
    report = json.loads((reports / "rag.json").read_text(encoding="utf-8"))
    ret = report["retrieval"]
    assert ret["total"] == ret["matched"] == 45 and not ret["unmatched"]
    assert list(ret["modes"]) == ["bm25", "bm25 + learned", "bm25 + learned (learned fusion)"]  # one row per recipe
    assert ret["modes"]["bm25 + learned"]["recall@5"] > ret["modes"]["bm25"]["recall@5"]
    assert report["meta"]["n"] == 45 and report["meta"]["model"] is None
    md = (reports / "rag.md").read_text(encoding="utf-8")
    rows = [ln for ln in md.splitlines() if ln.startswith("| bm25")]
    assert [ln.split(" | ")[0] for ln in rows] == ["| bm25", "| bm25 + learned", "| bm25 + learned (learned fusion)"]
    assert f"{ret['modes']['bm25 + learned']['recall@5']:.3f}" in rows[1]
    per = [json.loads(ln) for ln in (reports / "retrieved.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(per) == 45
    assert per[0]["target"] == "《中华人民共和国道路交通安全法》第九十一条"
    for row in per:
        assert row["question"] and row["target"].startswith("《")
        assert set(row["ranks"]) == {"bm25", "bm25 + learned", "bm25 + learned (learned fusion)"}
        assert all(v is None or v >= 1 for v in row["ranks"].values())
    found = sum(1 for row in per if row["ranks"]["bm25 + learned"] and row["ranks"]["bm25 + learned"] <= 5)
    assert found / 45 == pytest.approx(ret["modes"]["bm25 + learned"]["recall@5"])

    r = run("eval", idx, "--data", demo_eval(), "--retrieval-only", "--out", reports, "--rerank", "5", "--model",
            tmp_path / "no-model")  # an LM lever loads the model first: a missing one is a one-line user error
    flat = "".join(r.output.split())
    assert r.exit_code == 2 and "no-model" in flat and "nosuchmodel" in flat
    assert "Traceback" not in r.output
