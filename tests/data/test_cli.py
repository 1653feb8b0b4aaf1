"""The `lorakit data …` commands end to end (thin wrappers: the functions are tested elsewhere)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.data.formats import read_records

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["data", *map(str, args)])


def test_convert(fixtures, tmp_path):
    r = run("convert", fixtures / "sharegpt.jsonl", tmp_path / "out.json", "--to", "alpaca")
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "out.json").read_text())) == 3
    r = run("convert", fixtures / "qa.csv", tmp_path / "q.jsonl", "--to", "messages", "--column", "prompt=question",
            "--column", "response=answer")
    assert r.exit_code == 0 and len(read_records(tmp_path / "q.jsonl")) == 3


def test_check_exit_status_and_outputs(fixtures, tmp_path, tokenizer_dir):
    r = run("check", fixtures / "clean.jsonl", "--model", tokenizer_dir, "--cutoff", 384)
    assert r.exit_code == 0, r.output
    assert "no problems found" in r.output
    r = run("check", fixtures / "seeded.jsonl", "--model", tokenizer_dir, "--cutoff", 384, "--eval",
            fixtures / "eval.jsonl", "--report", tmp_path / "r.html", "--json", tmp_path / "r.json",
            "--fix", tmp_path / "fixed.jsonl", "--mask-pii")
    assert r.exit_code == 1, r.output
    assert "5 error(s), 11 warning(s)" in r.output and "seeded.jsonl:12" in r.output
    assert json.loads((tmp_path / "r.json").read_text())["errors"] == 5
    assert (tmp_path / "r.html").exists() and len(read_records(tmp_path / "fixed.jsonl")) == 12


def test_check_warnings_only_exit_zero(fixtures, tmp_path):
    p = tmp_path / "w.jsonl"
    lines = (fixtures / "clean.jsonl").read_text().splitlines()
    p.write_text("\n".join(lines + lines[:1]) + "\n")  # one exact duplicate: a warning
    r = run("check", p)
    assert r.exit_code == 0 and "1 warning(s)" in r.output


def test_malformed_input_is_one_paragraph_exit_2(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": []}\n' * 6 + '{"messages": [\n')
    r = run("convert", p, tmp_path / "o.jsonl", "--to", "alpaca")
    assert r.exit_code == 2
    assert f"{p}:7" in r.output and "Traceback" not in r.output
    r = run("check", tmp_path / "missing.jsonl")
    assert r.exit_code == 2 and "not found" in r.output


def test_build_and_split(laws, tmp_path):
    out = tmp_path / "law.jsonl"
    r = run("build", laws / "violation_points_rules_2021.md", "--out", out, "--templates", 2)
    assert r.exit_code == 0, r.output
    assert "74 records" in r.output
    r = run("split", out, "--out-dir", tmp_path / "s", "--eval", "0.2", "--seed", 1)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "train.jsonl").exists() and (tmp_path / "s" / "eval.jsonl").exists()
    assert not (tmp_path / "s" / "test.jsonl").exists()
