"""Never lose work, and scale out: SIGKILL + resume reproduces the uninterrupted curve; 2 gloo processes = 1."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorakit.train import recipe

VENV_BIN = Path(sys.executable).parent


def losses(run_dir: Path) -> dict[int, float]:
    """Loss per step (a resumed run first drops the lines logged after its checkpoint, so steps are unique)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            assert row["step"] not in out, f"step {row['step']} logged twice"
            out[row["step"]] = row["loss"]
    return out


def cli_args(cfg: dict) -> list[str]:
    args = []
    for k, v in cfg.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def test_sigkill_then_resume_matches_uninterrupted(base_cfg, tmp_path):
    cfg = {**base_cfg, "max_steps": 12, "save_steps": 3, "save_total_limit": 2}
    ref = recipe.train(recipe.TrainConfig(**{**cfg, "name": "straight"}))
    want = losses(ref.run_dir)

    run_dir = Path(cfg["runs_dir"]) / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lorakit.cli", "train", *cli_args({**cfg, "name": "killed"})],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    target = run_dir / "checkpoints" / "checkpoint-6" / "trainer_state.json"
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint-6 in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses(run_dir))
    assert killed_at < 12, "the run finished before it could be killed"

    res = recipe.train_from_cli(None, {}, resume=run_dir)
    assert res.summary["resumed_from"].endswith(("checkpoint-6", "checkpoint-9"))
    resumed_from = int(res.summary["resumed_from"].rsplit("-", 1)[1])
    assert killed_at - resumed_from <= 3  # at most one checkpoint interval lost
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == pytest.approx(want[step], abs=2e-4), step
    assert res.summary["status"] == "finished" and res.summary["global_step"] == 12


def test_sigterm_saves_a_checkpoint_and_stops(base_cfg):
    cfg = {**base_cfg, "max_steps": 400, "save_steps": 1000, "name": "term"}
    run_dir = Path(cfg["runs_dir"]) / "term"
    proc = subprocess.Popen([sys.executable, "-m", "lorakit.cli", "train", *cli_args(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run_dir / "metrics.jsonl").exists() or len(losses(run_dir)) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] < 400
    assert recipe.latest_checkpoint(run_dir / "checkpoints").name == f"checkpoint-{summary['global_step']}"


def test_two_gloo_processes_match_one(base_cfg, tmp_path):
    """Global batch 4: one process × 4 versus two processes × 2 (torchrun, gloo) give the same loss curve."""
    cfg = {**base_cfg, "max_steps": 5, "learning_rate": 1e-2}
    one = recipe.train(recipe.TrainConfig(**{**cfg, "name": "one"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29517",
                           "-m", "lorakit.cli", "train", *cli_args({**cfg, "batch_size": 2, "name": "two"})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(one.run_dir), losses(Path(cfg["runs_dir"]) / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), (step, a, b)
    summary = json.loads((Path(cfg["runs_dir"]) / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
