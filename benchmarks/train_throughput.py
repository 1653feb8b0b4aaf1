"""Training throughput: a plain transformers.Trainer + PEFT baseline versus lorakit's defaults, side by side.

Both train the same model on the same records (same loss mask, batch, LoRA r=8 all-linear, steps) and are then
scored on the same held-out set. Each side runs in its own process so peak memory is its own.
Baseline as the transformers/PEFT docs show it: fp32 on CPU (bf16 on CUDA), padding to the longest in the batch.

    python benchmarks/train_throughput.py [--model PRESET] [--steps 12] [--batch 4] [--records 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "src" / "lorakit" / "demo"


LONG = int(os.environ.get("LORAKIT_BENCH_LONG", "1"))


def records(path: Path, n: int) -> list:
    """The first n demo records; with --long K each is K consecutive records joined (longer sequences)."""
    from lorakit.data.formats import read_records
    from lorakit.data.record import Conversation, Turn
    recs = read_records(path)
    if LONG > 1:
        recs = [Conversation([Turn("user", "".join(r.prompt for r in group)),
                              Turn("assistant", "".join(r.answer for r in group))])
                for group in (recs[i:i + LONG] + recs[:max(0, i + LONG - len(recs))] for i in range(len(recs)))]
    return recs[:n]


def conversations(path: Path, n: int) -> list:
    return [r.messages() for r in records(path, n)]


def heldout_loss(model, tokenizer, device_precision=None) -> float:
    from lorakit.evaluate.generate import answer_loss
    loss, _ = answer_loss(model, tokenizer, conversations(DEMO / "eval.jsonl", 45), precision=device_precision)
    return loss


def run_baseline(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from lorakit.data.tokenize import assistant_spans
    from lorakit.models import load_tokenizer, resolve
    path = resolve(args.model)
    tok = load_tokenizer(path)
    rows = []
    for m in conversations(DEMO / "train.jsonl", args.records):
        ids, mask = assistant_spans(tok, m, max_length=512)
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [t if k else -100 for t, k in zip(ids, mask)]})
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    real = {"tokens": 0}
    collate = DataCollatorForSeq2Seq(tok, padding="longest")

    def counting(features):
        real["tokens"] += sum(len(f["input_ids"]) for f in features)
        return collate(features)

    targs = TrainingArguments(output_dir=args.tmp + "/baseline", per_device_train_batch_size=args.batch,
                              max_steps=args.steps, learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
                              logging_steps=1, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda,
                              disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_list(rows), data_collator=counting)
    t0 = time.perf_counter()
    out = trainer.train()
    secs = time.perf_counter() - t0
    peak = peak_mb()
    model.eval()
    return {"tokens": real["tokens"], "seconds": secs, "train_loss": out.training_loss, "peak_mb": peak,
            "heldout_loss": heldout_loss(model, tok)}


def run_lorakit(args) -> dict:
    from lorakit.config import TrainConfig
    from lorakit.data.formats import write_records
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.train.recipe import train
    subset = Path(args.tmp) / "train_subset.jsonl"
    write_records(subset, records(DEMO / "train.jsonl", args.records))
    from lorakit.config import parse_overrides
    extra = parse_overrides(json.loads(args.set)) if args.set else {}
    cfg = TrainConfig(**{"model": args.model, "data": str(subset), "runs_dir": args.tmp, "name": "lorakit",
                         "max_steps": args.steps, "batch_size": args.batch, "save_steps": 10_000,
                         "learning_rate": 2e-4, **extra})
    from rich.console import Console
    res = train(cfg, console=Console(stderr=True, quiet=True))
    s = res.summary
    path = resolve(args.model)
    tok = load_tokenizer(path)
    precision = pick_precision()
    model = load_model(path, precision, adapter=res.adapter_dir)
    return {"tokens": s["tokens_seen"], "seconds": s["train_seconds"], "train_loss": s["train_loss"],
            "peak_mb": s["peak_memory_mb"], "heldout_loss": heldout_loss(model, tok, precision),
            "precision": precision.why}


def peak_mb() -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), measured after training."""
    import resource

    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    result = run_baseline(args) if args.side == "baseline" else run_lorakit(args)
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--long", type=int, default=1, help="join K demo records into one (longer sequences)")
    ap.add_argument("--lorakit", nargs=argparse.REMAINDER, default=[],
                    help="lorakit config overrides, e.g. --lorakit --padding-free false")
    ap.add_argument("--side", choices=["baseline", "lorakit"], help=argparse.SUPPRESS)
    ap.add_argument("--set", default="", help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["baseline", "lorakit"], help="run one side only")
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        child(args)
        return
    import tempfile
    tmp = tempfile.mkdtemp(prefix="lorakit-bench-")
    results = {}
    for side in ("baseline", "lorakit") if not args.only else (args.only,):
        print(f"running {side} ({args.steps} steps, batch {args.batch}, {args.model}) …", flush=True)
        cmd = [sys.executable, __file__, "--side", side, "--tmp", tmp, "--model", args.model, "--steps",
               str(args.steps), "--batch", str(args.batch), "--records", str(args.records),
               "--set", json.dumps(args.lorakit)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "LORAKIT_BENCH_LONG": str(args.long)})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(line[-1][7:])
    if args.only:
        print("RESULTS " + json.dumps(results))
        return
    b, k = results["baseline"], results["lorakit"]
    print(f"\n{'':24}{'baseline':>14}{'lorakit':>14}{'ratio':>10}")
    print(f"{'real tokens/s':24}{b['tokens_per_s']:>14.1f}{k['tokens_per_s']:>14.1f}"
          f"{k['tokens_per_s'] / b['tokens_per_s']:>9.2f}×")
    print(f"{'peak memory (MB)':24}{b['peak_mb']:>14.0f}{k['peak_mb']:>14.0f}{k['peak_mb'] / b['peak_mb']:>9.2f}×")
    print(f"{'train loss / token':24}{b['train_loss']:>14.4f}{k['train_loss']:>14.4f}")
    print(f"{'held-out loss / token':24}{b['heldout_loss']:>14.4f}{k['heldout_loss']:>14.4f}")
    print(f"{'seconds':24}{b['seconds']:>14.1f}{k['seconds']:>14.1f}")
    print(f"lorakit precision: {k.get('precision')}")
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
