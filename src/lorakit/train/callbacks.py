"""Trainer callbacks: a metrics log that survives crashes, a live loss plot, and a clean stop on Ctrl-C/SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from transformers import TrainerCallback

from lorakit.io import append_jsonl, atomic_path, write_json

PROCESS_FILE = "process.json"  # present while a run trains: who trains it and towards which step


def plot_metrics(metrics_file: Path, out_png: Path) -> Path | None:
    """Loss (train and eval) and learning rate against step, written atomically as a PNG; for a preference
    objective a second panel shows the reward margin and the chosen/rejected log-probabilities."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in Path(metrics_file).read_text(encoding="utf-8").splitlines() if x.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    lrs = [(r["step"], r["learning_rate"]) for r in rows if "learning_rate" in r]
    if not train and not evals:
        return None
    pref = {k: [(r["step"], r[k]) for r in rows if k in r and "eval_loss" not in r]
            for k in ("rewards/margins", "logps/chosen", "logps/rejected")}
    if pref["rewards/margins"] or pref["logps/chosen"]:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
        _plot_preference(bx, pref)
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)" if not (pref["rewards/margins"] or pref["logps/chosen"])
                  else "objective loss")
    ax.grid(alpha=0.3)
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:gray", lw=0.8, ls="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        ax.legend(lines, labels, loc="upper right")
    else:
        ax.legend(loc="upper right")
    ax.set_title("lorakit training")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_png


def _plot_preference(ax, series: dict) -> None:
    """Reward margin (left axis) and mean log-probabilities of the chosen and rejected replies (right axis)."""
    if series["rewards/margins"]:
        ax.plot(*zip(*series["rewards/margins"]), color="tab:green", lw=1.2, label="reward margin (chosen − rejected)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward margin")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    for k, colour in (("logps/chosen", "tab:blue"), ("logps/rejected", "tab:red")):
        if series[k]:
            ax2.plot(*zip(*series[k]), color=colour, lw=0.9, ls="--", label=k.replace("logps/", "log-prob ") + " reply")
    ax2.set_ylabel("log-probability of the reply")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="best", fontsize=8)
    ax.set_title("preference")


class RunLogCallback(TrainerCallback):
    """Append every log line to metrics.jsonl and refresh loss.png; only the main process writes."""

    def __init__(self, run_dir: Path, progress=None, plot_every_s: float = 30.0):
        self.run_dir = Path(run_dir)
        self.metrics = self.run_dir / "metrics.jsonl"
        self.progress = progress
        self.plot_every_s = plot_every_s  # by time, not steps: a plot costs ~0.3 s, a GPU step far less
        self._t0 = time.perf_counter()
        self._last_plot = self._t0

    def on_train_begin(self, args, state, control, **kw):
        """Say which process trains this folder (``lorakit board`` shows, follows and stops CLI runs by it);
        the recipe removes the file once the adapter and summary are written."""
        if state.is_world_process_zero:
            import psutil
            me = psutil.Process()
            write_json(self.run_dir / PROCESS_FILE, {"pid": os.getpid(), "create_time": me.create_time(),
                                                     "max_steps": state.max_steps, "started": time.time()})

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4),
               "elapsed_s": round(time.perf_counter() - self._t0, 2)}
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()})
        append_jsonl(self.metrics, row)
        if self.progress is not None and "loss" in logs:
            self.progress.set_loss(logs["loss"])
        now = time.perf_counter()
        if now - self._last_plot >= self.plot_every_s or "eval_loss" in logs:
            plot_metrics(self.metrics, self.run_dir / "loss.png")
            self._last_plot = now

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero and self.metrics.exists():
            plot_metrics(self.metrics, self.run_dir / "loss.png")


class GracefulStopCallback(TrainerCallback):
    """First Ctrl-C or SIGTERM: save a checkpoint at the end of the current step and stop. A second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_begin(self, args, state, control, **kw):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def on_step_end(self, args, state, control, **kw):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kw):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class ProgressCallback(TrainerCallback):
    """A rich progress bar over optimizer steps with the latest loss (replaces transformers' tqdm)."""

    def __init__(self, console):
        self.console = console
        self.bar = None
        self.task = None
        self.loss = None

    def set_loss(self, loss):
        self.loss = loss
        if self.bar is not None:
            self.bar.update(self.task, loss=f"{loss:.4f}")

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn
        self.bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            TextColumn("loss {task.fields[loss]}"), console=self.console)
        self.bar.start()
        self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, loss="…")

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class ThroughputCallback(TrainerCallback):
    """Tokens/s over the whole run and in steady state (after the first `warmup` steps: compile, allocator and
    kernel autotuning happen there). `tokens` reads the trainer's count; the device is synchronised only at the
    two ends of the steady window."""

    def __init__(self, tokens, warmup: int = 3):
        self.tokens = tokens
        self.warmup = warmup
        self.start = None  # (time, tokens) when the steady window opens
        self.steady = None  # tokens/s
        self.begin = None
        self.first_step = None  # seconds from train begin to the end of step 1 on the device (compile shows here)

    def _sync(self):
        import torch
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kw):
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.first_step is None and self.begin is not None:
            self._sync()
            self.first_step = time.perf_counter() - self.begin
        if self.start is None and state.global_step >= self.warmup and state.global_step < state.max_steps:
            self._sync()
            self.start = (time.perf_counter(), self.tokens(), state.global_step)

    def on_train_end(self, args, state, control, **kw):
        if self.start is not None and state.global_step > self.start[2]:
            self._sync()
            t, n, _ = self.start
            self.steady = (self.tokens() - n) / max(1e-9, time.perf_counter() - t)
