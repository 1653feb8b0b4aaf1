"""Base versus fine-tuned (one or several adapters) on one held-out set: loss, generation, metrics, report.

The base model is loaded once; adapters are attached to it by name and switched, so N systems cost one load.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorakit.errors import LorakitError
from lorakit.evaluate import metrics as M
from lorakit.evaluate.generate import EVAL_BATCH

SHORT = {"loss": "loss", "perplexity": "ppl", "rouge_l": "ROUGE-L", "rouge_1": "ROUGE-1", "bleu_4": "BLEU-4",
         "exact_match": "EM", "keywords": "keyw.", "citation": "cite"}
LOWER_IS_BETTER = ("loss", "perplexity", "unsupported_figures")
METRICS = ("loss", "perplexity", "rouge_l", "rouge_1", "bleu_4", "exact_match", "keywords", "citation")


@dataclass
class SystemResult:
    name: str
    answers: list[str]
    per_example: list[dict]
    summary: dict
    seconds: float


@dataclass
class Comparison:
    questions: list[str]
    references: list[str]
    systems: list[SystemResult] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def table(self, title: str = "held-out comparison") -> Table:
        t = Table(title=title)
        t.add_column("system")
        for m in METRICS:
            t.add_column(SHORT[m], justify="right")
        best = {m: _best(m, [s.summary.get(m) for s in self.systems]) for m in METRICS}
        for s in self.systems:
            cells = []
            for m in METRICS:
                v = s.summary.get(m)
                txt = "–" if v is None else (f"{v:.3f}" if m not in ("perplexity",) else f"{v:.2f}")
                cells.append(f"[bold green]{txt}[/]" if v is not None and v == best[m] and len(self.systems) > 1
                             else txt)
            t.add_row(s.name, *cells)
        return t


def _best(metric: str, values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return min(vals) if metric in LOWER_IS_BETTER else max(vals)


def adapter_label(path: Path) -> str:
    path = Path(path)
    return path.parent.name if path.name == "adapter" else path.name


def name_adapters(adapters, reserved: tuple[str, ...] = ("base",)) -> dict[str, Path]:
    """Adapters named after their run folders, made unique."""
    named: dict[str, Path] = {}
    for i, a in enumerate(adapters):
        name = adapter_label(Path(a))
        while name in named or name in reserved:
            name += f"-{i}"
        named[name] = Path(a)
    return named


def load_eval_records(data, *, limit: int | None = None, system_prompt: str | None = None):
    """Records with a question and a reference answer (the first ``limit``), with the system prompt applied."""
    from lorakit.data.formats import read_records
    records = [r for r in read_records(data) if r.answer and r.prompt]
    if not records:
        raise LorakitError("no record with a question and a reference answer to evaluate on", file=data)
    records = records[:limit] if limit else records
    for r in records:
        if system_prompt and not r.system:
            r.system = system_prompt
    return records


def compare(model: str, adapters: list[str | Path], data: str | Path, *, out_dir: str | Path | None = None,
            max_new_tokens: int = 128, batch_size: int = EVAL_BATCH, limit: int | None = None, include_base: bool = True,
            system_prompt: str | None = None, console: Console | None = None) -> Comparison:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lorakit.evaluate.generate import answer_loss, generate, perplexity
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import AdapterSet, set_threads

    console = console or Console(stderr=True)
    records = load_eval_records(data, limit=limit, system_prompt=system_prompt)
    set_threads()
    path = resolve(model, console=console)
    tokenizer = load_tokenizer(path)
    precision = pick_precision()
    models = AdapterSet(load_model(path, precision), name_adapters(adapters))
    prompts = [r.prompt_messages() for r in records]
    full = [r.messages() for r in records]
    result = Comparison(questions=[r.prompt for r in records], references=[r.answer for r in records],
                        meta={"model": model, "model_path": str(path), "data": str(data), "n": len(records),
                              "max_new_tokens": max_new_tokens, "precision": precision.why})
    runs = (["base"] if include_base else []) + models.names
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as prog:
        for name in runs:
            task = prog.add_task(f"generating: {name}", total=len(records))
            active, ctx = models.use(None if name == "base" else name)
            t0 = time.perf_counter()
            with ctx:
                loss, per_loss = answer_loss(active, tokenizer, full, precision=precision, batch_size=batch_size)
                answers = generate(active, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   precision=precision, on_batch=lambda n, t=task: prog.advance(t, n))
            seconds = time.perf_counter() - t0
            per = []
            for r, ans, lo in zip(records, answers, per_loss):
                s = M.score(ans, r.answer, keywords=r.meta.get("keywords"), article=r.source.get("article"))
                s["loss"] = lo
                per.append(s)
            summary = {m: M.mean(p[m] for p in per) for m in METRICS if m not in ("loss", "perplexity")}
            summary["loss"] = loss
            summary["perplexity"] = perplexity(loss)
            summary["seconds"] = round(seconds, 1)
            result.systems.append(SystemResult(name, answers, per, summary, seconds))
    if out_dir:
        from lorakit.evaluate.report import write_reports
        write_reports(result, Path(out_dir))
    return result
