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
