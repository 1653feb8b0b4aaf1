"""Training runs as the board sees them: run folders under one runs dir, each trained by its own process.

A run is started exactly as from a terminal (``python -m lorakit.cli train CONFIG`` in a new session, output
to ``train.log``), so closing the page or the board never stops it, and a run started from the CLI is shown,
followed and stopped the same way: the recipe writes ``process.json`` (pid, target step) while it trains.
Stop is SIGTERM, which the recipe's GracefulStopCallback turns into "checkpoint at the end of this step, then
stop"; resume is ``lorakit train --resume RUN``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.train.callbacks import PROCESS_FILE

LOG = "train.log"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def metric_rows(run_dir: Path, start: int = 0) -> tuple[list[dict], int]:
    """Complete lines of metrics.jsonl from byte ``start`` on, and the offset after the last one read."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(start)
            raw = f.read()
    except FileNotFoundError:
        return [], 0
    end = raw.rfind(b"\n") + 1  # a line being written is read next time
    rows = [json.loads(x) for x in raw[:end].decode("utf-8").splitlines() if x.strip()]
    return rows, start + end


def _alive(info: dict | None) -> bool:
    """The process in process.json still runs (same pid and start time: a reused pid is not it)."""
    if not info:
        return False
    import psutil
    try:
        p = psutil.Process(int(info["pid"]))
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - info.get("create_time", 0)) < 1.0
    except (psutil.Error, KeyError, ValueError):
        return False


def last_error(run_dir: Path) -> str | None:
    """The one-paragraph error the CLI printed into train.log, if the child stopped on one."""
    try:
        lines = (Path(run_dir) / LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    tail = [x for x in lines if x.strip()][-1:]
    return tail[0] if tail and ("Error" in tail[0] or "Traceback" in tail[0]) else None


class Runs:
    """The runs dir: list, start, stop and resume runs; the processes this board started are reaped here."""

    def __init__(self, runs_dir: Path, cwd: Path):
        self.dir = Path(runs_dir)
        self.cwd = Path(cwd)
        self.children: dict[str, subprocess.Popen] = {}

    def path(self, name: str) -> Path:
        run = (self.dir / name).resolve()
        if run.parent != self.dir.resolve() or not (run / "config.yaml").exists():
            raise LorakitError("no such run", file=self.dir / name, field="run",
                               hint="Pick one from the run list")
        return run

    def status(self, name: str) -> dict:
        """What the run is doing now, its progress (step, target, ETA) and its summary when it has one."""
        run = self.dir / name
        info = read_json(run / PROCESS_FILE)
        summary = read_json(run / "summary.json")
        child = self.children.get(name)
        code = child.poll() if child else None
        if _alive(info):
            state = "running"
        elif child is not None and code is None:
            state = "starting"  # loading data and model; process.json comes with the first step
        elif child is not None and code != 0:
            state = "failed"
        elif summary:
            state = summary.get("status", "finished")
        else:
            state = "failed" if last_error(run) else "not started"
        rows, _ = metric_rows(run)
        steps = [r for r in rows if "loss" in r]
        step = steps[-1]["step"] if steps else (summary or {}).get("global_step", 0)
        target = (info or {}).get("max_steps") or (summary or {}).get("max_steps")
        out = {"name": name, "state": state, "step": step, "max_steps": target,
               "eta_s": eta(steps, target) if state == "running" else None,
               "summary": summary, "error": (last_error(run) or (
                   f"the training process ended on signal {-code} before its first checkpoint" if code and code < 0
                   else f"the training process exited with status {code}; see {run / LOG}"))
               if state == "failed" else None,
               "has_adapter": (run / "adapter" / "adapter_config.json").exists(),
               "resumable": (run / "checkpoints").is_dir() and state in ("interrupted", "failed")}
        return out

    def list(self) -> list[dict]:
        if not self.dir.is_dir():
            return []
        runs = [p for p in self.dir.iterdir() if (p / "config.yaml").exists()]
        runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [self.status(p.name) for p in runs]

    def _spawn(self, name: str, args: list[str]) -> None:
        run = self.dir / name
        run.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
        with open(run / LOG, "a", encoding="utf-8") as log:
            self.children[name] = subprocess.Popen(
                [sys.executable, "-m", "lorakit.cli", "train", *args], cwd=self.cwd, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, cfg) -> str:
        """Write the validated config into a new run folder and train it in a process of its own."""
        from lorakit import config as cfgmod
        from lorakit.io import write_text
        from lorakit.train.recipe import latest_checkpoint, run_name
        name = run_name(cfg)
        cfg.name = name
        run = self.dir / name
        if (run / "summary.json").exists() or latest_checkpoint(run / "checkpoints") or self._busy(name):
            raise LorakitError("this run folder already holds a run", file=run, field="name",
                               hint="Choose another name, or resume that run from the run list")
        write_text(run / "config.yaml", cfgmod.dump(cfg))
        self._spawn(name, [str(run / "config.yaml")])
        return name

    def _busy(self, name: str) -> bool:
        return self.status(name)["state"] in ("running", "starting")

    def stop(self, name: str) -> dict:
        """SIGTERM to the training process: it saves a checkpoint at the end of the current step and exits."""
        run = self.path(name)
        info = read_json(run / PROCESS_FILE)
        child = self.children.get(name)
        if _alive(info):
            pid = int(info["pid"])
        elif child is not None and child.poll() is None:
            pid = child.pid  # still loading: nothing trained yet, so nothing is lost
        else:
            raise LorakitError("this run is not training", file=run, field="run")
        os.kill(pid, signal.SIGTERM)
        return {"name": name, "signalled": pid}

    def resume(self, name: str) -> dict:
        from lorakit.train.recipe import latest_checkpoint
        run = self.path(name)
        if self._busy(name):
            raise LorakitError("this run is still training", file=run, field="run", hint="Stop it first")
        if latest_checkpoint(run / "checkpoints") is None:
            raise LorakitError("this run has no complete checkpoint to resume from", file=run / "checkpoints",
                               field="run", hint="Start it again as a new run")
        self._spawn(name, ["--resume", str(run)])
        return {"name": name}


def eta(steps: list[dict], target: int | None) -> float | None:
    """Seconds left at the pace of the current process (elapsed_s restarts when a run is resumed)."""
    if not target or len(steps) < 2:
        return None
    seg = [steps[-1]]
    for r in reversed(steps[:-1]):
        if r["elapsed_s"] > seg[-1]["elapsed_s"]:
            break
        seg.append(r)
    first, last = seg[-1], seg[0]
    if last["step"] <= first["step"] or last["elapsed_s"] <= first["elapsed_s"]:
        return None
    rate = (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])
    return round(max(0, target - last["step"]) / rate, 1)
