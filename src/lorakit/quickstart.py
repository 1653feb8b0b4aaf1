"""`lorakit quickstart`: the whole lifecycle on the bundled demo data, composed of the stage functions.

pull the model → check the data → train a LoRA adapter → evaluate base vs fine-tuned → report → next commands.
Nothing here is demo-only: each step is the function its own command calls.
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from lorakit.errors import LorakitError


def demo_file(name: str) -> Path:
    return Path(str(resources.files("lorakit") / "demo" / name))


def quickstart(*, model: str, runs_dir: str = "runs", name: str | None = None, epochs: float = 3.0,
               max_new_tokens: int = 96, eval_limit: int | None = None, console: Console) -> dict:
    from lorakit.config import TrainConfig
    from lorakit.data.check import check
    from lorakit.evaluate.compare import compare
    from lorakit.io import write_json, write_text
    from lorakit.models import load_tokenizer, resolve
    from lorakit.train.recipe import train

    train_file, eval_file = demo_file("train.jsonl"), demo_file("eval.jsonl")
    name = name or time.strftime("quickstart-%Y%m%d-%H%M%S")

    console.rule("[bold]1/4 model")
    path = resolve(model, console=console)
    console.print(f"{model} → {path}")

    console.rule("[bold]2/4 data check")
    cfg = TrainConfig(model=model, data=str(train_file), eval_data=str(eval_file), runs_dir=runs_dir, name=name,
                      epochs=epochs, max_length=512, batch_size=4, learning_rate=2e-4, save_steps=50)
    report = check(train_file, tokenizer=load_tokenizer(path), model=model, cutoff=cfg.max_length,
                   eval_path=eval_file)
    console.print(f"{len(report.records)} training records, {len(report.errors)} errors, "
                  f"{len(report.warnings)} warnings (train/eval leakage, duplicates, lengths, PII, masks checked)")
    if report.errors:
        first = report.errors[0]
        raise LorakitError(f"the demo data failed its check: {first.message}", file=first.file, line=first.line)

    console.rule("[bold]3/4 train")
    result = train(cfg, console=console)
    run_dir = result.run_dir

    console.rule("[bold]4/4 evaluate base vs fine-tuned")
    cmp = compare(model, [result.adapter_dir], eval_file, out_dir=run_dir / "eval", max_new_tokens=max_new_tokens,
                  limit=eval_limit, console=console)
    console.print(cmp.table("held-out demo questions: base vs fine-tuned"))
    base, tuned = cmp.systems[0], cmp.systems[1]
    show = Table(title="a few answers", show_lines=True)
    show.add_column("question", ratio=2)
    show.add_column("base", ratio=3)
    show.add_column("fine-tuned", ratio=3)
    for i in range(min(3, len(cmp.questions))):
        show.add_row(cmp.questions[i], base.answers[i], tuned.answers[i])
    console.print(show)

    verdict = {
        "rouge_l": {"base": base.summary["rouge_l"], "fine_tuned": tuned.summary["rouge_l"]},
        "loss": {"base": base.summary["loss"], "fine_tuned": tuned.summary["loss"]},
        "citation": {"base": base.summary["citation"], "fine_tuned": tuned.summary["citation"]},
        "improved": tuned.summary["rouge_l"] > base.summary["rouge_l"] and tuned.summary["loss"] < base.summary["loss"],
        "train": result.summary,
    }
    write_json(run_dir / "quickstart.json", verdict)
    write_text(run_dir / "report.md", (run_dir / "eval" / "eval.md").read_text(encoding="utf-8"))
    console.print(Panel.fit(
        f"run folder: {run_dir}\n"
        f"  config.yaml · adapter/ · metrics.jsonl · loss.png · summary.json · eval/eval.html · report.md\n\n"
        f"next:\n"
        f"  lorakit train --dry-run --data {train_file} --model {model}   # see the loss mask\n"
        f"  lorakit eval --model {model} --adapter {run_dir} --data {eval_file}\n"
        f"  lorakit data check {train_file} --model {model} --eval {eval_file}\n"
        f"  lorakit doctor --model {model}",
        title="[green]quickstart finished" if verdict["improved"] else "[yellow]quickstart finished"))
    return verdict
