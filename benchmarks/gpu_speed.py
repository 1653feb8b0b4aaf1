"""GPU training speed: a plain transformers + PEFT loop, the same loop with Liger kernels, and lorakit, side by side.

Every variant trains in its own process on the same GPU (so each peak memory is its own), on the same token rows,
with LoRA r=16 alpha=32 on q,k,v,o,gate,up,down of a randomly initialised Qwen2 with a real model's shape
(benchmarks/shape_model.py), bf16. Printed per variant: tokens/s in steady state (from step --warmup) and over the
whole run, peak allocated GPU memory, MFU, mean loss, and the ratios to the plain loop.

    python benchmarks/gpu_speed.py --shape 0.5b --batch 16 --steps 20 --data fixed --variants hf,hf_liger,lorakit
    python benchmarks/gpu_speed.py --parity --shape 0.5b        # fast path vs stock path on one batch

Variants: hf (plain loop, bf16 autocast, PEFT's fp32 adapters, torch fused AdamW, pad to the longest), hf_liger
(the same plus Liger's RMSNorm/RoPE/SwiGLU and fused linear cross-entropy), lorakit (defaults), and lorakit with one
fast-path piece off: lk_no_fused_loss, lk_no_kernels, lk_no_fused_lora, lk_padded (padding_free false),
lk_sdpa_packed (padding-free rows through SDPA's dense block mask instead of varlen attention), lk_workers2
(two loader processes collate batches), lk_log10
(logging every 10 steps instead of every step).
Data: fixed = rows of exactly --seq tokens; var = lengths uniform in 100..--seq (seeded), real tokens counted.

MFU = tokens/s × (4·N + 6·N_lora + 6·L·T_eff·d_attn) / peak, N = matmul parameters (all but the input embedding;
a tied head counts), forward 2N + input-gradient 2N for frozen weights, 6 per LoRA parameter, causal attention
(QK^T and PV, forward + 2× backward, half the square) with T_eff = Σ len² / Σ len; peak = 790 TFLOP/s (bf16 dense
matmul measured on an H200).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEAK_FLOPS = float(os.environ.get("LORAKIT_PEAK_FLOPS", 790e12))
ABLATIONS = {
    "lorakit": {},
    "lk_no_fused_loss": {"fast": {"fused_loss": False}},
    "lk_no_kernels": {"fast": {"kernels": False}},
    "lk_no_fused_lora": {"fast": {"fused_lora": False}},
    "lk_padded": {"padding_free": False},
    "lk_sdpa_packed": {"padding_free": True, "fast": {"varlen": False}},
    "lk_workers2": {"fast": {"loader_workers": 2}},
    "lk_log10": {"logging_steps": 10},  # what a host sync per logged step costs
    "lk_no_cache": {"fast": {"lora_cache": False}},  # LoRA compute copies cast at every call
    "lk_sync_logs": {"fast": {"async_logs": False}},  # every logging step waits for the GPU
    "lk_liger_flce": {},  # Liger's own fused linear cross-entropy (two host syncs a step, 256-row chunks at 0.5B)
    "lk_compile": {"fast": {"compile": True}},  # torch.compile of each decoder layer (Liger kernels off)
}


# ---------------------------------------------------------------------------------------------------- data
def make_records(tok, n: int, lengths: list[int], seed: int = 0) -> list[dict]:
    """Chat records whose encoding under the chat template has (about) the given token lengths."""
    from lorakit.data.tokenize import assistant_spans
    rng = random.Random(seed)
    pool = [t for t in tok.get_vocab() if not t.startswith("<|")]
    out = []
    for i in range(n):
        want = lengths[i % len(lengths)]
        msgs = [{"role": "user", "content": f"问题 {i}"}, {"role": "assistant", "content": ""}]
        words: list[str] = []
        have = len(assistant_spans(tok, msgs)[0])
        while have < want:  # grow by decoded vocabulary pieces (each one token or more) …
            words.extend(tok.convert_tokens_to_string([rng.choice(pool)]) for _ in range(want - have))
            msgs[1]["content"] = "".join(words)
            have = len(assistant_spans(tok, msgs)[0])
        lo, hi = 0, len(words)  # … then keep the longest prefix that fits
        while lo < hi:  # longest prefix of words that fits
            mid = (lo + hi + 1) // 2
            msgs[1]["content"] = "".join(words[:mid])
            if len(assistant_spans(tok, msgs)[0]) <= want:
                lo = mid
            else:
                hi = mid - 1
        msgs[1]["content"] = "".join(words[:lo])
        out.append({"messages": [dict(m) for m in msgs]})
    return out


def lengths_for(kind: str, seq: int, n: int) -> list[int]:
    if kind == "fixed":
        return [seq]
    rng = random.Random(1)
    return [rng.randint(100, seq) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- sides
def flops_per_token(cfg, n_base: int, rows: list[list[int]], n_lora: int) -> float:
    """The MFU numerator per token (formula in the module docstring); n_base = parameters without LoRA."""
    emb = cfg.vocab_size * cfg.hidden_size
    n = n_base - emb + (emb if getattr(cfg, "tie_word_embeddings", False) else 0)
    t_eff = sum(len(r) ** 2 for r in rows) / sum(len(r) for r in rows)
    d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    return 4 * n + 6 * n_lora + 6 * cfg.num_hidden_layers * t_eff * d_attn


def sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_hf(args, liger: bool) -> dict:
    """The plain loop people write from the transformers and PEFT docs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorakit.config import TrainConfig
    from lorakit.models import load_tokenizer
    from lorakit.train.recipe import encode
    from lorakit.data.formats import read_records
    tok = load_tokenizer(args.model)
    cfg = TrainConfig(data=args.records, max_length=args.seq)
    rows = encode(read_records(args.records), tok, cfg).rows
    random.Random(42).shuffle(rows)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(dev)
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        _apply_liger_kernel_to_instance(model=model)  # rope, rms_norm, swiglu, fused linear cross-entropy
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev == "cuda")
    model.train()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, losses = [], []
    sync()
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch = rows[step * args.batch:(step + 1) * args.batch]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (width - len(r["input_ids"])) for r in batch])
        lab = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=lab.to(dev)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # read after the loop: no host sync per step
        tokens.append(int(mask.sum()))
        if step == 0:
            sync()
            t_1 = time.perf_counter()
        if step == args.warmup - 1:
            sync()
            t_w = time.perf_counter()
    sync()
    end = time.perf_counter()
    total, w = end - t0, args.warmup
    n_all = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": sum(tokens[w:]) / (end - t_w), "tokens_per_s_whole": sum(tokens) / total,
            "seconds": total, "peak_gib": peak_gib(), "losses": [x.item() for x in losses], "tokens": sum(tokens),
            "first_step_s": t_1 - t0,
            "flops_per_token": flops_per_token(model.config, n_all - n_lora,
                                               [r["input_ids"] for r in rows[:args.steps * args.batch]], n_lora)}


def run_lorakit(args, variant: str) -> dict:
    import torch
    from rich.console import Console

    from lorakit.config import TrainConfig
    from lorakit.train import fast
    from lorakit.train.recipe import train
    over = ABLATIONS[variant]
    fast.OWN_LIGER_LOOP = variant != "lk_liger_flce"
    cfg = TrainConfig(**{"model": args.model, "data": args.records, "runs_dir": args.tmp, "name": variant,
                         "max_steps": args.steps, "batch_size": args.batch, "max_length": args.seq,
                         "save_steps": 100_000, "learning_rate": 1e-4, "warmup_ratio": 0.0,
                         "scheduler": "constant", "weight_decay": 0.01,  # the plain loop's AdamW, for the curves
                         "lora": {"r": 16, "alpha": 32, "targets": TARGETS}, **over})
    res = train(cfg, console=Console(stderr=True, quiet=True))
    s = res.summary
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    from transformers import AutoConfig

    from lorakit.data.formats import read_records
    from lorakit.models import load_tokenizer
    from lorakit.train.recipe import encode
    enc = encode(read_records(args.records), load_tokenizer(args.model), cfg).rows
    n_lora = s["trainable_params"]
    fpt = flops_per_token(AutoConfig.from_pretrained(args.model), s["total_params"] - n_lora,
                          [r["input_ids"] for r in enc[:args.steps * args.batch]], n_lora)
    return {"tokens_per_s": s["tokens_per_second_steady"], "tokens_per_s_whole": s["tokens_per_second"],
            "seconds": s["train_seconds"], "peak_gib": s["peak_memory_mb"] / 1024, "tokens": s["tokens_seen"],
            "losses": [r["loss"] for r in rows if "loss" in r], "fast_path": s["fast_path"],
            "first_step_s": s.get("first_step_seconds"),
            "flops_per_token": fpt, "cuda": torch.cuda.is_available()}


def peak_gib() -> float:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ---------------------------------------------------------------------------------------------------- parity
def parity(args) -> None:
    """Same weights, same LoRA init, same batches, torch fused AdamW: --parity-steps optimiser steps of the stock
    path (PEFT + autocast + SDPA, padded) against lorakit's fast path (Liger kernels, the fused loss, fused LoRA with
    its cached compute copies, varlen attention on the packed row), in one process. Step 1's LoRA gradients are
    compared too; the loss curves show that the adapter learns (a stale compute copy leaves it flat)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from lorakit.config import TrainConfig
    from lorakit.data.formats import read_records
    from lorakit.models import load_tokenizer
    from lorakit.train import fast
    from lorakit.train.recipe import encode
    tok = load_tokenizer(args.model)
    rows = encode(read_records(args.records), tok, TrainConfig(data=args.records, max_length=args.seq)).rows
    steps = args.parity_steps
    batches = [rows[i * args.batch:(i + 1) * args.batch] for i in range(steps)]
    batches = [b if b else rows[:args.batch] for b in batches]
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def build():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(dev)

    def lora(m):
        torch.manual_seed(1)
        return get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))  # PEFT's init: B = 0

    def grads(m):
        return torch.cat([p.grad.float().flatten() for n, p in sorted(m.named_parameters()) if p.requires_grad])

    def padded(batch):
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (width - len(r["input_ids"])) for r in batch])
        lab = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch])
        mask = torch.arange(width)[None] < torch.tensor([len(r["input_ids"]) for r in batch])[:, None]
        return ids.to(dev), lab.to(dev), mask.long().to(dev)

    def train(model, loss_fn):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.parity_lr, fused=dev == "cuda")
        losses, g1 = [], None
        for i, batch in enumerate(batches):
            loss = loss_fn(model, batch)
            loss.backward()
            if i == 0:
                g1 = grads(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, g1

    def stock_loss(model, batch):
        ids, lab, mask = padded(batch)
        with torch.autocast(dev, dtype=torch.bfloat16):
            return model(input_ids=ids, attention_mask=mask, labels=lab).loss

    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    kind = "liger" if dev == "cuda" and fast.liger_available() else "torch"

    def fast_loss(model, batch):
        b = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in collate(batch).items()}
        target = b.pop("labels")[:, 1:]
        with torch.autocast(dev, dtype=torch.bfloat16), fast.head_emits_hidden(model) as head:
            hidden = model(**b, use_cache=False, logits_to_keep=torch.arange(target.shape[1], device=dev)).logits
        loss_sum, _ = fast.linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight,
                                                target.reshape(-1), kind=kind)
        return loss_sum / (target != -100).sum()

    stock = lora(build())
    ref, ref_g = train(stock, stock_loss)
    del stock
    model = build()
    if dev == "cuda" and fast.liger_available():
        fast.apply_kernels(model)
    if dev == "cuda" and fast.varlen_available():
        fast.use_varlen(model)
    model = lora(model)
    fast.fuse_lora(model, cache=True)
    got, g = train(model, fast_loss)
    cos = torch.nn.functional.cosine_similarity(g, ref_g, dim=0).item()
    rel = ((g - ref_g).norm() / ref_g.norm()).item()
    worst = max(abs(a - b) / b for a, b in zip(got, ref))
    print(f"PARITY {steps} steps, lr {args.parity_lr}, fused AdamW ({kind} loss, cached LoRA copies)")
    print("PARITY stock  " + " ".join(f"{x:.4f}" for x in ref))
    print("PARITY fast   " + " ".join(f"{x:.4f}" for x in got))
    print(f"PARITY worst step rel diff {worst:.2e}; loss fell {ref[0] - ref[-1]:.3f} (stock) vs {got[0] - got[-1]:.3f}"
          f" (fast); step-1 LoRA grad cosine {cos:.5f}, rel norm diff {rel:.3e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"stock": ref, "fast": got, "grad_cosine": cos, "grad_rel": rel,
                                               "worst_rel": worst, "lr": args.parity_lr, "batch": args.batch}))


# ---------------------------------------------------------------------------------------------------- driver
def profiled(args, variant: str) -> dict:
    """run_lorakit under torch.profiler for two steady steps: the kernels that take the GPU time, and the host."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from lorakit.train.trainer import LorakitTrainer
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                   schedule=schedule(wait=args.warmup + 1, warmup=1, active=2))
    step = LorakitTrainer.training_step

    def stepped(self, *a, **k):
        out = step(self, *a, **k)
        prof.step()
        return out
    LorakitTrainer.training_step = stepped
    with prof:
        result = run_lorakit(args, variant)
    avg = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(avg.table(sort_by=key, row_limit=35, max_name_column_width=70), file=sys.stderr)
            break
        except (AttributeError, KeyError, RuntimeError):
            continue
    gpu_us = sum(e.self_device_time_total for e in avg) if hasattr(avg[0], "self_device_time_total") else 0
    print(f"PROFILE 2 steps: GPU busy {gpu_us / 1e3:.1f} ms", file=sys.stderr)
    return result


def child(args) -> None:
    if args.side in ("hf", "hf_liger"):
        result = run_hf(args, liger=args.side == "hf_liger")
    elif args.profile:
        result = profiled(args, args.side)
    else:
        result = run_lorakit(args, args.side)
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="0.5b", help="0.5b, 7b or tiny (benchmarks/shape_model.py)")
    ap.add_argument("--model", default=None, help="an existing model folder instead of --shape")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state figure")
    ap.add_argument("--data", choices=["fixed", "var"], default="fixed")
    ap.add_argument("--variants", default="hf,hf_liger,lorakit")
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--parity-steps", type=int, default=8)
    ap.add_argument("--parity-lr", type=float, default=1e-4)
    ap.add_argument("--profile", action="store_true", help="profile the lorakit variants (kernel table on stderr)")
    ap.add_argument("--workdir", default="/tmp/lorakit-gpu-speed")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--records", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        child(args)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        args.model = str(work / f"model-{args.shape}")
        if not (Path(args.model) / "config.json").exists():
            from shape_model import build
            build(args.shape, Path(args.model))
    from lorakit.data.formats import read_records, write_records
    from lorakit.models import load_tokenizer
    tok = load_tokenizer(args.model)
    n = max(args.steps, args.parity_steps if args.parity else 0) * args.batch
    records = work / f"records-{args.data}-{args.seq}-{n}.jsonl"
    if not records.exists():
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
            for r in make_records(tok, n, lengths_for(args.data, args.seq, n)):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        write_records(records, read_records(f.name))
    args.records = str(records)
    if args.parity:
        parity(args)
        return
    results = {}
    for side in args.variants.split(","):
        print(f"running {side} ({args.shape}, {args.data}, batch {args.batch}, {args.steps} steps) …", flush=True)
        cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--records", args.records,
               "--tmp", str(work / "runs" / f"{args.shape}-{args.data}"), "--batch", str(args.batch),
               "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)] + \
            (["--profile"] if args.profile else [])
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if "compile" in side:
            env.setdefault("TORCH_LOGS", "recompiles")
        shutil.rmtree(work / "runs" / f"{args.shape}-{args.data}" / side, ignore_errors=True)  # a fresh run
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{side} failed:\n{proc.stderr[-2500:]}", flush=True)
            continue
        if args.profile:
            err = proc.stderr.splitlines()
            first = next((i for i, x in enumerate(err) if x.startswith("-----")), len(err))
            print("\n".join(x for x in err[first:] if x.startswith(("PROFILE", "-")) or "  " in x))
        recompiles = [x for x in proc.stderr.splitlines() if "ecompil" in x]
        if recompiles:  # TORCH_LOGS=recompiles: why torch.compile compiled again
            print("\n".join(x[:400] for x in recompiles[:8]))
        results[side] = json.loads(line[-1][7:])
        results[side]["process_s"] = time.perf_counter() - t0
        r = results[side]
        print(f"  {r['tokens_per_s']:,.0f} tok/s steady, {r['tokens_per_s_whole']:,.0f} whole-run, "
              f"{r['peak_gib']:.1f} GiB, process {r['process_s']:.0f} s", flush=True)
    report(args, results)


def report(args, results: dict) -> None:
    base = results.get("hf")
    liger = results.get("hf_liger")
    print(f"\n{args.shape} shape, {args.data} rows (≤ {args.seq} tokens), batch {args.batch}, {args.steps} steps "
          f"(steady from step {args.warmup + 1})")
    head = f"{'variant':18}{'tok/s steady':>14}{'whole-run':>12}{'peak GiB':>10}{'MFU':>7}{'× hf':>7}" \
           f"{'× liger':>9}{'mem × hf':>10}{'mean loss':>11}{'step 1 s':>10}"
    print(head)
    for name, r in results.items():
        mfu = r["tokens_per_s"] * r["flops_per_token"] / PEAK_FLOPS
        x_hf = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        x_lg = f"{r['tokens_per_s'] / liger['tokens_per_s']:.2f}" if liger else "-"
        mem = f"{r['peak_gib'] / base['peak_gib']:.2f}" if base else "-"
        loss = sum(r["losses"]) / len(r["losses"]) if r["losses"] else float("nan")
        print(f"{name:18}{r['tokens_per_s']:>14,.0f}{r['tokens_per_s_whole']:>12,.0f}{r['peak_gib']:>10.1f}"
              f"{100 * mfu:>6.1f}%{x_hf:>7}{x_lg:>9}{mem:>10}{loss:>11.4f}{r.get('first_step_s') or float('nan'):>10.1f}")
    for name, r in results.items():
        print(f"  {name} losses: {' '.join(f'{x:.3f}' for x in r['losses'][:8])}")
    print("RESULTS " + json.dumps({"shape": args.shape, "data": args.data, "batch": args.batch, "steps": args.steps,
                                   "results": results}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
