"""The training recipe, top to bottom: config → data → tokens and loss mask → model + LoRA → TRL → run folder.

One recipe for every objective: ``stage`` sft trains conversations with `LorakitTrainer`; dpo, orpo, kto and simpo
train preference or KTO records with the TRL trainer `lorakit.train.objectives` picks, on the same model, adapter,
run folder, callbacks, checkpoints and resume. Every user mistake (bad config, unreadable data, records of the wrong
kind or with nothing to learn) is raised before a model loads.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from lorakit import config as cfgmod
from lorakit.config import TrainConfig
from lorakit.errors import LorakitError
from lorakit.io import atomic_path, write_json, write_text


@dataclass
class Encoded:
    """Token ids and labels (-100 = not trained) for each record, plus what the checks found."""

    rows: list[dict]
    truncated: int = 0  # records cut at max_length
    answer_cut: int = 0  # records whose trained span was cut
    eos_id: int = -1
    lengths: list[int] = field(default_factory=list)
    supervised: list[int] = field(default_factory=list)  # trained tokens per record


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path | None
    summary: dict


# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; older 5.x only knows the first.
def _checkpointing_arg() -> str:
    from trl import SFTConfig
    return "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"


# ---------------------------------------------------------------------------------------------------- helpers
def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_name(cfg: TrainConfig) -> str:
    if cfg.name:
        return cfg.name
    stem = Path(cfg.data).stem
    model = Path(cfg.model).stem if ("/" in cfg.model or cfg.model.endswith(".gguf")) else cfg.model
    if world_size() > 1:  # every rank must agree on the folder without talking to each other
        digest = hashlib.sha256(cfgmod.dump(cfg).encode()).hexdigest()[:8]
        return f"{model}-{stem}-{digest}"
    return f"{model}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_records(cfg: TrainConfig):
    """Read and validate training (and eval, and replay) records; errors name file and line, before any model is
    loaded. Returns (train records with the replay mixed in, eval records, how many replay records went in)."""
    import random

    from lorakit.data.formats import read_records
    from lorakit.data.record import Preference, role_order_problem
    from lorakit.data.tools import tool_call_problem
    from lorakit.train.objectives import records_for_stage, views

    def read(path: str) -> list:
        records = read_records(path)
        if not records:
            raise LorakitError("this file has no records", file=path)
        records = records_for_stage(records, cfg.stage, path)
        for rec in records:
            convs = [rec.conversation("chosen"), rec.conversation("rejected")] if isinstance(rec, Preference) else \
                views([rec])
            problem = next((p for c in convs for p in (role_order_problem(c), tool_call_problem(c)) if p), None)
            if problem:
                raise LorakitError(problem, file=rec.source.get("file", path), line=rec.source.get("line"),
                                   field="messages", hint="Run `lorakit data check` for a full report")
            if cfg.system_prompt and not rec.system:
                rec.system = cfg.system_prompt
        return records

    train = read(cfg.data)
    evals = read(cfg.eval_data) if cfg.eval_data else []
    if not cfg.eval_data and cfg.eval_ratio > 0:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        held = set(order[:max(1, int(len(train) * cfg.eval_ratio))])
        evals = [c for i, c in enumerate(train) if i in held]
        train = [c for i, c in enumerate(train) if i not in held]
    replayed = 0
    if cfg.replay:  # mixed in after the split: the held-out loss stays the domain's alone
        from lorakit.data.replay import mix_replay
        train, replayed = mix_replay(train, read(cfg.replay.data), cfg.replay.ratio, cfg.seed)
    return train, evals, replayed


def encode(records, tokenizer, cfg: TrainConfig) -> Encoded:
    """Apply the chat template and build labels: assistant spans + end-of-turn token are trained, the rest is not."""
    from lorakit.data.tokenize import assistant_spans
    from lorakit.models.chat import end_of_turn_id
    from lorakit.train.objectives import views
    eos = end_of_turn_id(tokenizer)
    out = Encoded(rows=[], eos_id=eos)
    for conv in views(records):
        ids, mask = assistant_spans(tokenizer, conv.messages(), max_length=None,
                                    last_turn_only=cfg.train_turns == "last" or cfg.stage != "sft", tools=conv.tools)
        full = len(ids)
        if not cfg.completion_only:
            mask = [1] * len(ids)
        if full > cfg.max_length:
            out.truncated += 1
            out.answer_cut += int(any(mask[cfg.max_length:]))
        ids, mask = ids[: cfg.max_length], mask[: cfg.max_length]
        labels = [t if m else -100 for t, m in zip(ids, mask)]
        out.rows.append({"input_ids": list(ids), "labels": labels})
        out.lengths.append(len(ids))
        out.supervised.append(sum(mask))
    return out


def check_encoded(enc: Encoded, records, tokenizer, cfg: TrainConfig) -> None:
    """Refuse to train when an example has nothing to learn or when no example teaches the model to stop."""
    empty = [i for i, n in enumerate(enc.supervised) if n == 0]
    if empty:
        conv = records[empty[0]]
        raise LorakitError(
            f"{len(empty)} record(s) have no trained token under the chat template and max_length={cfg.max_length} "
            "(the prompt alone fills the length, or there is no assistant text)",
            file=conv.source.get("file", cfg.data), line=conv.source.get("line"),
            hint="Raise max_length, shorten the prompts, or drop those records (`lorakit data check --fix`)")
    trains_eos = sum(1 for r in enc.rows if enc.eos_id in [t for t in r["labels"] if t != -100])
    if trains_eos == 0:
        raise LorakitError(
            f"no example trains the end-of-turn token {tokenizer.convert_ids_to_tokens(enc.eos_id)!r}, so the model "
            "would never learn to stop", field="max_length",
            hint="Raise max_length so that answers are not cut, or check the chat template")


def render_mask(tokenizer, row: dict, console: Console, limit: int = 400) -> None:
    """Print one tokenized example: trained tokens highlighted, the rest dim. A run of tokens of one kind is
    decoded together: byte-level tokens often split a Chinese character, which alone decodes to U+FFFD."""
    from itertools import groupby

    from rich.text import Text
    text = Text()
    pairs = list(zip(row["input_ids"], row["labels"]))[:limit]
    for trained, run in groupby(pairs, key=lambda p: p[1] != -100):
        text.append(tokenizer.decode([t for t, _ in run]), style="bold black on green" if trained else "dim")
    console.print(text)


def length_summary(lengths: list[int]) -> dict:
    s = sorted(lengths)
    if not s:
        return {}
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"n": len(s), "min": s[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1],
            "mean": round(sum(s) / len(s), 1), "total": sum(s)}


def steps_per_epoch(n_records: int, cfg: TrainConfig) -> int:
    return max(1, math.ceil(n_records / (cfg.batch_size * world_size()) / cfg.grad_accum))


def total_steps(n_records: int, cfg: TrainConfig) -> int:
    return cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch(n_records, cfg) * cfg.epochs)


def peft_config(cfg: TrainConfig):
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.targets, use_dora=cfg.lora.dora, use_rslora=cfg.lora.rslora,
                      bias="none", task_type="CAUSAL_LM")


def load_for_training(model_path: Path, cfg: TrainConfig, precision):
    """Base model in the chosen precision; QLoRA quantises to 4-bit NF4 (CUDA only)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.models.load import load_model
    if cfg.method != "qlora":
        model = load_model(model_path, precision, trainable=True)
    else:
        if precision.device != "cuda":
            raise LorakitError("QLoRA (4-bit NF4 through bitsandbytes) needs an NVIDIA GPU; this machine has none",
                               field="method", hint="Use method: lora (the default) on CPU or MPS; it fits a 0.5B "
                                                    "model in about 4 GB")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise LorakitError("QLoRA needs the bitsandbytes package", field="method",
                               hint="pip install bitsandbytes==0.50.2") from None
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        model = AutoModelForCausalLM.from_pretrained(str(model_path), quantization_config=q,
                                                     dtype=torch.bfloat16, device_map={"": local})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    torch.set_grad_enabled(True)
    if cfg.method == "full":
        model.float()  # full fine-tuning keeps fp32 master weights; autocast still runs matmuls in bf16
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def resolve_padding_free(cfg: TrainConfig, model) -> bool:
    """Padding-free batches pay off where attention handles packed rows cheaply: varlen flash attention on CUDA
    (torch's own varlen_attn, or flash-attn), or the CPU, where attention is a small share of the work. With SDPA
    on CUDA the packed row needs a dense block mask, measured slower than padding to the longest (0.70x on an H200)."""
    from lorakit.train.fast import varlen_available
    if cfg.padding_free is not None:
        return cfg.padding_free
    attn = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    device = next(model.parameters()).device.type
    return device != "cuda" or "flash" in attn or (varlen_available() and cfg.fast.varlen is not False)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest complete checkpoint (trainer_state.json is written last, so a checkpoint without it is partial)."""
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def final_eval_metrics(trainer, state, best_loaded: bool) -> dict:
    """The eval of the final weights: reuse the one logged at the last step instead of evaluating twice."""
    last = next((h for h in reversed(state.log_history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == state.global_step and not best_loaded:
        return last
    return trainer.evaluate()


def trim_metrics(metrics: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from, so the curve has no doubled steps."""
    if not metrics.exists():
        return
    keep = [line for line in metrics.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text(metrics, "".join(x + "\n" for x in keep))


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ---------------------------------------------------------------------------------------------------- recipe
def train(cfg: TrainConfig, *, dry_run: bool = False, resume: str | Path | None = None,
          console: Console | None = None) -> RunResult:
    import torch
    console = console or Console(stderr=True)
    main = is_main_process()
    say = console.print if main else (lambda *a, **k: None)

    # 1. data and options, validated before anything heavy
    if cfg.tensorboard:
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise LorakitError("tensorboard: true needs the tensorboard package", field="tensorboard",
                               hint="pip install tensorboard, or leave it off: metrics.jsonl and loss.png are "
                                    "always written")
    train_recs, eval_recs, replayed = load_records(cfg)

    # 2. model reference → folder, tokenizer, chat template, end-of-turn token
    from lorakit.models import load_tokenizer, pick_precision, resolve
    from lorakit.models.load import set_threads
    model_path = resolve(cfg.model, console=console)
    tokenizer = load_tokenizer(model_path)

    # 3. tokens and loss mask (preference stages: prompt + chosen reply, for the checks and the lengths; TRL
    #    tokenizes the pairs itself under the same chat template)
    from lorakit.data.tools import template_supports_tools
    from lorakit.train.objectives import views
    if any(r.tools or any(t.tool_calls for t in r.turns) for r in views(train_recs + eval_recs)) and \
            not template_supports_tools(tokenizer):
        raise LorakitError("the data calls tools, but this model's chat template cannot render tool calls or tool "
                           "results (they would vanish from the training text)", field="model",
                           hint="Use a model whose chat template supports tools (Qwen2.5 does), or drop those records")
    enc = encode(train_recs, tokenizer, cfg)
    check_encoded(enc, train_recs, tokenizer, cfg)
    eval_enc = encode(eval_recs, tokenizer, cfg) if eval_recs else None
    steps = total_steps(len(enc.rows), cfg)
    lengths = length_summary(enc.lengths)
    supervised = sum(enc.supervised)

    # 4. the run folder (resumed runs reuse theirs)
    run_dir = Path(resume) if resume else Path(cfg.runs_dir) / run_name(cfg)
    precision = pick_precision(requested=cfg.precision)

    if dry_run:
        from lorakit.doctor import estimate
        say(f"[bold]{len(enc.rows)}[/] training records{f' (of them {replayed} replay)' if replayed else ''}, "
            f"{len(eval_recs)} eval records; stage {cfg.stage}" + (f" (β {cfg.beta()})" if cfg.stage != "sft" else "")
            + f"; model {model_path}" + (f"; starting from adapter {cfg.adapter}" if cfg.adapter else ""))
        say(f"precision: {precision.why}")
        if cfg.stage == "sft":
            for i, row in enumerate(enc.rows[:2]):
                say(f"\n[bold]example {i + 1}[/] ({len(row['input_ids'])} tokens, "
                    f"{enc.supervised[i]} trained: [bold black on green]highlighted[/])")
                render_mask(tokenizer, row, console)
        else:
            from lorakit.data.tokenize import assistant_spans
            from lorakit.train.objectives import describe
            for i, rec in enumerate(train_recs[:2]):
                for label, msgs in describe(rec):
                    ids, mask = assistant_spans(tokenizer, msgs, last_turn_only=True, tools=rec.tools)
                    say(f"\n[bold]example {i + 1}, {label}[/] ({len(ids)} tokens, {sum(mask)} scored: "
                        "[bold black on green]highlighted[/])")
                    render_mask(tokenizer, {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]},
                                console)
        say(f"\ntoken lengths: {lengths}")
        say(f"trained tokens: {supervised} of {lengths.get('total', 0)} "
            f"({100 * supervised / max(1, lengths.get('total', 1)):.0f}%); truncated at max_length={cfg.max_length}: "
            f"{enc.truncated} (answer cut in {enc.answer_cut})")
        say(f"steps: {steps} ({steps_per_epoch(len(enc.rows), cfg)} per epoch × {cfg.epochs} epochs, "
            f"batch {cfg.batch_size} × accumulation {cfg.grad_accum} × {world_size()} process(es))")
        est = estimate(model_path, cfg, n_tokens=lengths.get("total", 0), precision=precision)
        say(est.render())
        return RunResult(run_dir, None, {"dry_run": True, "steps": steps, "lengths": lengths,
                                         "supervised_tokens": supervised, "estimate": est.as_dict()})

    if not resume and ((run_dir / "summary.json").exists() or latest_checkpoint(run_dir / "checkpoints")):
        raise LorakitError("this run folder already holds a run", file=run_dir, field="name",
                           hint=f"Continue it with `lorakit train --resume {run_dir}`, or choose another --name")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", cfgmod.dump(cfg))
    ckpt_dir = run_dir / "checkpoints"
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(ckpt_dir)
        if resume_from is None:
            raise LorakitError("this run has no complete checkpoint to resume from", file=ckpt_dir,
                               hint="Start it again without --resume")
        say(f"resuming from {resume_from}")
        if main:
            trim_metrics(run_dir / "metrics.jsonl", int(resume_from.name.rsplit("-", 1)[1]))

    # 5. model + LoRA
    set_threads()
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig

    from lorakit.train import fast as fastmod
    from lorakit.train.callbacks import GracefulStopCallback, ProgressCallback, RunLogCallback, ThroughputCallback
    from lorakit.train.trainer import LorakitTrainer

    model = load_for_training(model_path, cfg, precision)
    peft_cfg = None if cfg.method == "full" else peft_config(cfg)
    if cfg.adapter:  # continue this adapter (DPO/KTO: a frozen copy of it is the reference)
        from lorakit.models.load import attach_adapter
        model = attach_adapter(model, cfg.adapter, trainable=True)
        peft_cfg = None

    use_cpu = precision.device == "cpu"
    padding_free = resolve_padding_free(cfg, model)
    fast = fastmod.resolve(cfg.fast, precision.device, cfg.method, padding_free=padding_free and not cfg.packing,
                           world=world_size(), fsdp=os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"))
    if fast.kernels:
        fastmod.apply_kernels(model)
    if fast.varlen:
        fastmod.use_varlen(model)
    if cfg.tensorboard:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    eval_strategy = "steps" if (eval_enc and cfg.eval_steps) else ("epoch" if eval_enc else "no")
    early = cfg.early_stopping_patience is not None and eval_enc is not None
    common = dict(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        **{_checkpointing_arg(): cfg.gradient_checkpointing},
        bf16=precision.autocast == "bfloat16",
        fp16=precision.autocast == "float16",
        use_cpu=use_cpu,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps,
        save_strategy="steps" if not early or eval_strategy == "steps" else eval_strategy,
        save_steps=cfg.eval_steps if (early and cfg.eval_steps) else cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # that filter reads the loss on the host at every step
        prediction_loss_only=True,
        report_to=["tensorboard"] if cfg.tensorboard else [],
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        dataloader_num_workers=fast.loader_workers,
        dataloader_persistent_workers=fast.loader_workers > 0,
        ddp_backend="gloo" if use_cpu and world_size() > 1 else None,
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        save_only_model=False,
        remove_unused_columns=True,
    )
    progress = ProgressCallback(console)
    stopper = GracefulStopCallback()
    callbacks = [RunLogCallback(run_dir, progress=progress), stopper, progress]
    if early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.stage == "sft":
        args = SFTConfig(**common, max_length=cfg.max_length if (cfg.packing or not padding_free) else None,
                         packing=cfg.packing, padding_free=padding_free and not cfg.packing)  # rows already truncated
        trainer = LorakitTrainer(
            model=model, args=args, processing_class=tokenizer, peft_config=peft_cfg,
            train_dataset=Dataset.from_list(enc.rows),
            eval_dataset=Dataset.from_list(eval_enc.rows) if eval_enc else None,
            callbacks=callbacks, fast=fast,
        )
    else:
        from lorakit.train.objectives import preference_trainer
        trainer = preference_trainer(cfg, model, tokenizer, train_recs, eval_recs, common, callbacks, peft_cfg)
    trainer.remove_callback(__import__("transformers").trainer_callback.PrinterCallback)
    if fast.fused_lora and cfg.stage == "sft":
        fastmod.fuse_lora(trainer.model, cache=fast.lora_cache)
    if fast.compile:
        fastmod.compile_layers(trainer.model)
    throughput = ThroughputCallback(trainer.tokens_seen) if hasattr(trainer, "tokens_seen") else None
    if throughput:
        trainer.add_callback(throughput)
    trainable, total = count_params(trainer.model)
    say(f"{cfg.stage}: training {trainable / 1e6:.2f} M of {total / 1e6:.1f} M parameters "
        f"({100 * trainable / total:.2f} %) · {precision.why} · fast path: {fast.describe()} · {steps} steps → "
        f"{run_dir}")

    # 6. train (resume restores optimizer, scheduler, RNG and data order through the Trainer)
    if precision.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - t0

    # 7. outputs: adapter (atomic), summary, plot
    state = trainer.state
    interrupted = stopper.requested
    adapter_dir = run_dir / ("adapter" if cfg.method != "full" else "model")
    final_eval = final_eval_metrics(trainer, state, early) if (eval_enc and not interrupted) else {}
    tokens_seen = trainer.tokens_seen() if hasattr(trainer, "tokens_seen") else (state.num_input_tokens_seen or None)
    if main:
        adapters = list(getattr(trainer.model, "peft_config", {}) or {})
        with atomic_path(adapter_dir, is_dir=True) as tmp:  # DPO/KTO's frozen "ref" copy is not part of the result
            trainer.model.save_pretrained(str(tmp), **({"selected_adapters": ["default"]} if len(adapters) > 1 else {}))
            tokenizer.save_pretrained(str(tmp))
        from lorakit.doctor import peak_memory_mb
        from lorakit.train.objectives import last_preference_metrics
        summary = {
            "run_dir": str(run_dir), "model": cfg.model, "model_path": str(model_path), "method": cfg.method,
            "stage": cfg.stage, "started_from_adapter": cfg.adapter,
            "status": "interrupted" if interrupted else "finished",
            "global_step": state.global_step, "max_steps": state.max_steps, "epochs": round(state.epoch or 0, 3),
            "train_loss": round(out.training_loss, 5) if out.training_loss == out.training_loss else None,
            "eval_loss": round(final_eval["eval_loss"], 5) if "eval_loss" in final_eval else None,
            "train_seconds": round(seconds, 1),
            "tokens_seen": tokens_seen,
            "tokens_per_second": round(tokens_seen / seconds, 1) if (seconds > 0 and tokens_seen) else None,
            "tokens_per_second_steady": round(throughput.steady, 1) if throughput and throughput.steady else None,
            "first_step_seconds": round(throughput.first_step, 2) if throughput and throughput.first_step else None,
            "fast_path": fast.as_dict(),
            "trainable_params": trainable, "total_params": total,
            "peak_memory_mb": peak_memory_mb(precision.device),
            "precision": precision.why, "world_size": world_size(),
            "records": {"train": len(enc.rows), "eval": len(eval_recs), "replay": replayed},
            "lengths": lengths, "supervised_tokens": supervised, "truncated": enc.truncated,
            "answer_cut": enc.answer_cut,
            "resumed_from": str(resume_from) if resume_from else None,
        }
        if cfg.stage != "sft":
            summary["preference"] = {"beta": cfg.beta(), **last_preference_metrics(state.log_history)}
        write_json(run_dir / "summary.json", summary)
        from lorakit.train.callbacks import PROCESS_FILE, plot_metrics
        if (run_dir / "metrics.jsonl").exists():
            plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
        (run_dir / PROCESS_FILE).unlink(missing_ok=True)
    else:
        summary = {}
    if interrupted:
        say(f"[yellow]stopped at step {state.global_step}; checkpoint saved. Resume with:[/] "
            f"lorakit train --resume {run_dir}")
    finish_processes()
    return RunResult(run_dir, adapter_dir, summary)


def finish_processes() -> None:
    """Under torchrun: wait until the main process has written the adapter and summary, then close the process
    group. Left to the interpreter's exit, gloo's threads can outlive it and a rank dies with SIGABRT
    ("terminate called without an active exception") after a finished run; torchrun then reports a failure."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def train_from_cli(config_file: str | None, overrides: dict, *, dry_run=False, resume=None,
                   console: Console | None = None) -> RunResult:
    """Resolve file + flags (a resumed run reads its own saved config first) and run the recipe."""
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.exists():
            raise LorakitError("not a lorakit run folder (no config.yaml)", file=resume)
        config_file = config_file or str(saved)
    cfg = cfgmod.build(TrainConfig, config_file, overrides)
    return train(cfg, dry_run=dry_run, resume=resume, console=console)
