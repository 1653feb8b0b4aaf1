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
        if step == args.warmup - 1:
            sync()
            t_w = time.perf_counter()
    sync()
    end = time.perf_counter()
    total, w = end - t0, args.warmup
    n_all = sum(p.numel() for p in model.parameters())
    return {"tokens_per_s": sum(tokens[w:]) / (end - t_w), "tokens_per_s_whole": sum(tokens) / total,
            "seconds": total, "peak_gib": peak_gib(), "losses": [x.item() for x in losses], "tokens": sum(tokens),
            "flops_per_token": flops_per_token(model.config, n_all - n_lora,
                                               [r["input_ids"] for r in rows[:args.steps * args.batch]], n_lora)}


def run_lorakit(args, variant: str) -> dict:
    import torch
    from rich.console import Console

    from lorakit.config import TrainConfig
    from lorakit.train.recipe import train
    over = ABLATIONS[variant]
    cfg = TrainConfig(**{"model": args.model, "data": args.records, "runs_dir": args.tmp, "name": variant,
                         "max_steps": args.steps, "batch_size": args.batch, "max_length": args.seq,
                         "save_steps": 100_000, "learning_rate": 1e-4, "warmup_ratio": 0.0,
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
            "flops_per_token": fpt, "cuda": torch.cuda.is_available()}


def peak_gib() -> float:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ---------------------------------------------------------------------------------------------------- parity
def parity(args) -> None:
    """One batch, same weights, same LoRA init: loss and LoRA gradients of the stock path (PEFT + autocast + SDPA,
    padded) against lorakit's fast path (Liger kernels, fused loss, fused LoRA, varlen attention on the packed
    row), in one process."""
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
    rows = rows[:args.batch]
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def build():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(dev)
        return m

    def lora(m):
        torch.manual_seed(1)
        m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False))
        for p in m.parameters():  # B≠0 so every path carries signal; small, as after some training
            if p.requires_grad:
                p.data.mul_(0.1)
        return m

    def grads(m):
        return torch.cat([p.grad.float().flatten() for n, p in sorted(m.named_parameters()) if p.requires_grad])

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (width - len(r["input_ids"])) for r in rows]).to(dev)
    lab = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]).to(dev)
    mask = (lab != -100) | (torch.arange(width, device=dev)[None] < torch.tensor(
        [len(r["input_ids"]) for r in rows], device=dev)[:, None])
    stock = lora(build())
    with torch.autocast(dev, dtype=torch.bfloat16):
        out = stock(input_ids=ids, attention_mask=mask.long(), labels=lab)
    out.loss.backward()
    ref_loss, ref_g = out.loss.item(), grads(stock)
    del stock, out
    model = build()
    if dev == "cuda" and fast.liger_available():
        fast.apply_kernels(model)
    if dev == "cuda" and fast.varlen_available():
        fast.use_varlen(model)
    model = lora(model)
    fast.fuse_lora(model)
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(rows)
    batch = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in batch.items()}
    labels = batch.pop("labels")
    target = labels[:, 1:]
    with torch.autocast(dev, dtype=torch.bfloat16), fast.head_emits_hidden(model) as head:
        hidden = model(**batch, use_cache=False, logits_to_keep=torch.arange(target.shape[1], device=dev)).logits
    kind = "liger" if dev == "cuda" and fast.liger_available() else "torch"
    loss_sum, _ = fast.linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, target.reshape(-1),
                                            kind=kind)
    loss = loss_sum / (target != -100).sum()
    loss.backward()
    g = grads(model)
    cos = torch.nn.functional.cosine_similarity(g, ref_g, dim=0).item()
    rel = ((g - ref_g).norm() / ref_g.norm()).item()
    print(f"PARITY stock loss {ref_loss:.6f}  fast loss {loss.item():.6f}  rel diff {abs(loss.item() - ref_loss) / ref_loss:.2e}"
          f"  LoRA grad cosine {cos:.5f}  rel norm diff {rel:.3e}  ({kind} loss)")


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
    n = args.steps * args.batch
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
           f"{'× liger':>9}{'mem × hf':>10}{'mean loss':>11}"
    print(head)
    for name, r in results.items():
        mfu = r["tokens_per_s"] * r["flops_per_token"] / PEAK_FLOPS
        x_hf = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        x_lg = f"{r['tokens_per_s'] / liger['tokens_per_s']:.2f}" if liger else "-"
        mem = f"{r['peak_gib'] / base['peak_gib']:.2f}" if base else "-"
        loss = sum(r["losses"]) / len(r["losses"]) if r["losses"] else float("nan")
        print(f"{name:18}{r['tokens_per_s']:>14,.0f}{r['tokens_per_s_whole']:>12,.0f}{r['peak_gib']:>10.1f}"
              f"{100 * mfu:>6.1f}%{x_hf:>7}{x_lg:>9}{mem:>10}{loss:>11.4f}")
    for name, r in results.items():
        print(f"  {name} losses: {' '.join(f'{x:.3f}' for x in r['losses'][:8])}")
    print("RESULTS " + json.dumps({"shape": args.shape, "data": args.data, "batch": args.batch, "steps": args.steps,
                                   "results": results}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
