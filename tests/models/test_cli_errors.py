"""A wrong --model path, an unknown preset, a corrupt GGUF: one paragraph on stderr, exit 2, nothing half-written."""
from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.io import cache_home


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ would appear here if anything were written

    def run(*args):
        return CliRunner().invoke(app, list(args))

    return run


@pytest.fixture
def data_file(tmp_path):
    f = tmp_path / "x.jsonl"
    rows = [{"messages": [{"role": "user", "content": "酒后能开车吗？"}, {"role": "assistant", "content": "不能。"}]}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return f


def _one_paragraph_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error:"), err
    assert "Traceback" not in result.output and "Traceback" not in err
    assert "\n\n" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def _cache_snapshot() -> set[str]:
    """Files and non-empty folders in the cache (an empty parent folder made on the way is not half-written)."""
    home = cache_home()
    return {str(p.relative_to(home)) for p in home.rglob("*")
            if p.is_file() or (p.is_dir() and any(p.iterdir()))} if home.exists() else set()


def test_models_pull_unknown_preset(cli):
    before = _cache_snapshot()
    _one_paragraph_error(cli("models", "pull", "nope"), "unknown preset 'nope'", "tiny-random")
    assert _cache_snapshot() == before


def test_models_list_shows_presets(cli):
    result = cli("models", "list")
    assert result.exit_code == 0
    assert "qwen2.5-coder" in result.stdout and "tiny-random" in result.stdout


def test_train_with_missing_model_path(cli, data_file, tmp_path):
    _one_paragraph_error(cli("train", "--model", "/no/such", "--data", str(data_file)), "/no/such",
                         "no such model file or folder")
    assert not (tmp_path / "runs").exists()


def test_train_with_unknown_preset(cli, data_file, tmp_path):
    _one_paragraph_error(cli("train", "--model", "qwen-9000", "--data", str(data_file)), "unknown preset 'qwen-9000'")
    assert not (tmp_path / "runs").exists()


def test_train_with_corrupt_gguf(cli, data_file, tmp_path, tiny_gguf):
    bad = tmp_path / "broken.gguf"
    blob = tiny_gguf.read_bytes()
    bad.write_bytes(blob[: len(blob) // 3])
    before = _cache_snapshot()
    _one_paragraph_error(cli("train", "--model", str(bad), "--data", str(data_file)), str(bad))
    assert not (tmp_path / "runs").exists()
    assert _cache_snapshot() == before  # no half-converted folder in the cache


def test_train_with_non_gguf_bytes(cli, data_file, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(os.urandom(1000))
    _one_paragraph_error(cli("train", "--model", str(bad), "--data", str(data_file)), "not a GGUF file")


def test_doctor_with_missing_model(cli):
    _one_paragraph_error(cli("doctor", "--model", "./missing/model"), "no such model file or folder")


def test_piped_models_list_keeps_each_row_on_one_line(tmp_path):
    """`lorakit models list | grep NAME` finds every preset: piped output is not folded at 80 columns."""
    import subprocess
    import sys

    from lorakit.models.presets import PRESETS
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "lorakit.cli", "models", "list"], capture_output=True, text=True,
                         env=env, check=True).stdout
    for name in PRESETS:
        assert sum(name in line for line in out.splitlines()) == 1, (name, out)
