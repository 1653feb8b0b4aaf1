"""`lorakit quickstart`: the whole lifecycle on the bundled demo data, composed of the stage functions.

pull the model → check the data → index the law texts (learning from the training Q&A) → write the RAFT mix
→ train a LoRA adapter on it → compare base / base + RAG / fine-tuned / fine-tuned + RAG → measure what the
fine-tune cost outside the domain (the general probe) → report.
Nothing here is demo-only: each step is the function its own command calls. The law texts are not bundled
(lorakit ships only its own words): the quickstart indexes ``--docs``, by default the ``shared/data/laws``
folder found beside the checkout; without one it trains on the plain records and compares base vs fine-tuned.
"""
from __future__ import annotations

import hashlib
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from lorakit.errors import LorakitError


def demo_file(name: str) -> Path:
    return Path(str(resources.files("lorakit") / "demo" / name))


def find_docs() -> Path | None:
    """``shared/data/laws`` in the working folder or a folder above it, or above the installed package."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *Path.cwd().parents, *here.parents):
        cand = root / "shared" / "data" / "laws"
        if cand.is_dir():
            return cand
    return None


def demo_index(docs: Path, train_file: Path, *, console: Console):
    """The index over ``docs`` that learned from ``train_file``, cached in LORAKIT_HOME by content, so a second
    quickstart does not embed the articles again."""
    from lorakit.io import cache_home
    from lorakit.rag.index import FORMAT, build_index, load_index
    from lorakit.rag.ingest import find_documents
    h = hashlib.sha256(f"format {FORMAT}".encode())
    for f in [*find_documents([docs]), train_file]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    out = cache_home() / "indexes" / f"quickstart-{h.hexdigest()[:16]}"
    if (out / "meta.json").is_file():
        return load_index(out)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    with Progress(TextColumn("embedding articles"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("", total=None)
        return build_index([docs], out, learn_from=[train_file],
                           on_progress=lambda d, t: bar.update(task, completed=d, total=t),
                           on_note=lambda note: console.print(f"[yellow]{note}[/]"))


def quickstart(*, model: str, runs_dir: str = "runs", name: str | None = None, epochs: float = 1.0,
               max_new_tokens: int = 96, eval_limit: int | None = None, docs: str | Path | None = None,
               rag: bool = True, general: bool = True, console: Console) -> dict:
    from lorakit.config import TrainConfig
    from lorakit.data.check import check
    from lorakit.io import write_json, write_text
    from lorakit.models import load_tokenizer, resolve
    from lorakit.train.recipe import train

    train_file, eval_file = demo_file("train.jsonl"), demo_file("eval.jsonl")
    name = name or time.strftime("quickstart-%Y%m%d-%H%M%S")
    docs = Path(docs) if docs else (find_docs() if rag else None)
    if docs is not None and not docs.exists():
        raise LorakitError("no such documents folder", file=docs, field="docs")
    steps = 5 if docs else 4

    console.rule(f"[bold]1/{steps} model")
    path = resolve(model, console=console)
    console.print(f"{model} → {path}")

    console.rule(f"[bold]2/{steps} data check")
    report = check(train_file, tokenizer=load_tokenizer(path), model=model, cutoff=512, eval_path=eval_file)
    console.print(f"{len(report.records)} training records, {len(report.errors)} errors, "
                  f"{len(report.warnings)} warnings (train/eval leakage, duplicates, lengths, PII, masks checked)")
    if report.errors:
        first = report.errors[0]
        raise LorakitError(f"the demo data failed its check: {first.message}", file=first.file, line=first.line)

    index = None
    data = train_file
    run_dir = Path(runs_dir) / name
    if docs:
        console.rule(f"[bold]3/{steps} index the law texts and write the RAFT mix")
        from lorakit.rag.raft import build_raft
        index = demo_index(docs, train_file, console=console)
        meta = index.meta
        console.print(f"{meta['chunks']} articles of {len(meta['documents'])} documents from {docs}; learned from "
                      f"{meta['learned']['records']} training Q&A ({meta['learned']['terms']} mapped words)"
                      + ("" if index.has_dense else "; BM25 only"))
        run_dir.mkdir(parents=True, exist_ok=True)
        data = run_dir / "raft.jsonl"
        st = build_raft(index, train_file, data)
        console.print(f"RAFT mix → {data}: {st.plain} plain questions + {st.raft} with 3 passages "
                      f"({st.with_gold} with the source article among them, {st.without_gold} without)")
    else:
        console.print("[yellow]no law texts found (shared/data/laws beside the checkout, or --docs): training on the "
                      "plain records and comparing base vs fine-tuned only[/]")

    console.rule(f"[bold]{steps - 1}/{steps} train")
    cfg = TrainConfig(model=model, data=str(data), runs_dir=runs_dir, name=name, epochs=epochs,
                      max_length=1280 if docs else 512, batch_size=4, learning_rate=2e-4, save_steps=50)
    result = train(cfg, console=console)
    run_dir = result.run_dir

    console.rule(f"[bold]{steps}/{steps} evaluate")
    if index is not None:
        from lorakit.rag.compare import rag_compare
        rc = rag_compare(index, eval_file, model=model, adapters=[result.adapter_dir], out_dir=run_dir / "eval",
                         max_new_tokens=max_new_tokens, limit=eval_limit, console=console)
        cmp = rc.comparison
        console.print(rc.retrieval.table("retrieval on the held-out questions"))
        console.print(rc.table("held-out demo questions: base / base + RAG / fine-tuned / fine-tuned + RAG"))
        report_file = run_dir / "eval" / "rag.md"
    else:
        from lorakit.evaluate.compare import compare
        cmp = compare(model, [result.adapter_dir], eval_file, out_dir=run_dir / "eval",
                      max_new_tokens=max_new_tokens, limit=eval_limit, console=console)
        console.print(cmp.table("held-out demo questions: base vs fine-tuned"))
        report_file = run_dir / "eval" / "eval.md"
    systems = {s.name: s for s in cmp.systems}
    base, tuned = cmp.systems[0], next(s for s in cmp.systems if s.name not in ("base", "base+rag")
                                       and not s.name.endswith("+rag"))
    show = Table(title="a few answers", show_lines=True)
    show.add_column("question", ratio=2)
    for s in cmp.systems:
        show.add_column(s.name, ratio=3)
    for i in range(min(3, len(cmp.questions))):
        show.add_row(cmp.questions[i], *[s.answers[i] for s in cmp.systems])
    console.print(show)

    general_report = None
    if general:  # what the fine-tune cost outside the domain, on the shipped probe
        from lorakit.evaluate.general import general_compare
        general_report = general_compare(model, [result.adapter_dir], out_dir=run_dir / "eval",
                                         max_new_tokens=max_new_tokens, console=console)
        console.print(general_report.table("general ability outside the domain: base vs fine-tuned"))

    def pick(metric):
        return {s.name: s.summary.get(metric) for s in cmp.systems}

    verdict = {
        "rouge_l": pick("rouge_l"), "loss": pick("loss"), "citation": pick("citation"),
        "improved": tuned.summary["rouge_l"] > base.summary["rouge_l"] and tuned.summary["loss"] < base.summary["loss"],
        "train": result.summary,
    }
    if general_report is not None:
        verdict["general"] = general_report.to_dict()["systems"]
    if index is not None:
        verdict["citation_exact"] = pick("citation_exact")
        verdict["unsupported_figures"] = pick("unsupported_figures")
        verdict["retrieval"] = rc.retrieval.modes
        tuned_rag = systems.get(f"{tuned.name}+rag")
        verdict["rag_improved"] = bool(tuned_rag and (tuned_rag.summary.get("citation_exact") or 0)
                                       > (systems["base+rag"].summary.get("citation_exact") or 0))
    write_json(run_dir / "quickstart.json", verdict)
    write_text(run_dir / "report.md", report_file.read_text(encoding="utf-8")
               + ("\n" + general_report.to_markdown() if general_report is not None else ""))
    ask = (f"  lorakit rag ask {index.path} \"喝了酒开车被查到会怎么处罚？\" --adapter {run_dir}\n" if index is not None
           else "")
    console.print(Panel.fit(
        f"run folder: {run_dir}\n"
        f"  config.yaml · adapter/ · metrics.jsonl · loss.png · summary.json · eval/eval.html · report.md"
        + (" · eval/general.md" if general_report is not None else "") + "\n\n"
        f"next:\n{ask}"
        f"  lorakit train --dry-run --data {data} --model {model}   # see the loss mask\n"
        f"  lorakit eval --model {model} --adapter {run_dir} --data {eval_file}\n"
        f"  lorakit data check {train_file} --model {model} --eval {eval_file}\n"
        f"  lorakit doctor --model {model}",
        title="[green]quickstart finished" if verdict["improved"] else "[yellow]quickstart finished"))
    return verdict
