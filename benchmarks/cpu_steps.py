"""CPU training step, piece by piece: the stock step against lorakit's CPU fast path, alternating in one process.

    python benchmarks/cpu_steps.py [--rows 700,600,550,550 90,85,100,80] [--rounds 3] [--model PRESET]

One padding-free row per step (the examples' lengths given by --rows), the default preset in bf16 with LoRA r=8
alpha 16 on all linear layers, bf16 autocast, the LM head on every third position (as a completion-only loss
keeps part of them). Three variants run step after step in the same process, so a noisy host (the cores here are
shared) slows all of them alike:

- stock: SDPA with the dense block mask transformers builds from position_ids, PEFT's LoRA forward;
- + per-example flash: lorakit's varlen attention function, one causal SDPA call per example (CPU flash kernel);
- + fused LoRA: lorakit's LoraLinearFn with cached bf16 copies of A and s·B, and rows of at most
  `fast.MASKED_UNDER` tokens through one SDPA call with the block mask (the CPU default now).

Prints the median seconds per step of each and the ratio to stock. Random token ids: the step's cost does not
depend on which tokens they are.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

VARIANTS = [("stock", False, False), ("+ per-example flash", True, False), ("+ fused LoRA (default)", True, True)]
# the default sends rows of at most fast.MASKED_UNDER tokens through one masked call instead: here every row of
# "+ per-example flash" really goes per example, and "(default)" follows the rule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rows", nargs="+", default=["700,600,550,550", "90,85,100,80"],
                    help="one row per argument: the lengths of the examples packed into it")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import Linear as LoraLinear
    from transformers import AttentionInterface, AutoModelForCausalLM

    from lorakit.models import resolve
    from lorakit.train import fast

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(resolve(args.model)), dtype=torch.bfloat16)
    AttentionInterface.register(fast.VARLEN, fast.varlen_attention)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    fast.fuse_lora(model, cache=True)
    threshold = fast.MASKED_UNDER
    lora_layers = [m for m in model.modules() if type(m) is LoraLinear]
    fused_forward = {id(m): m.forward for m in lora_layers}

    def configure(varlen: bool, fused: bool) -> None:
        model.base_model.model.set_attn_implementation(fast.VARLEN if varlen else "sdpa")
        for m in lora_layers:
            if fused:
                m.forward = fused_forward[id(m)]
            else:
                m.__dict__.pop("forward", None)  # back to PEFT's own forward

    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for spec in args.rows:
        lens = [int(x) for x in spec.split(",")]
        total = sum(lens)
        ids = torch.randint(0, model.config.vocab_size - 1000, (1, total))
        pos = torch.cat([torch.arange(n) for n in lens])[None]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        keep = torch.arange(total - 1)[::3]
        extra = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens))

        def step(varlen: bool, fused: bool) -> float:
            configure(varlen, fused)
            fast.MASKED_UNDER = threshold if fused else 0
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=ids, position_ids=pos, logits_to_keep=keep, use_cache=False,
                            **(extra if varlen else {}))
                loss = torch.nn.functional.cross_entropy(out.logits[0].float(), ids[0, keep + 1])
            loss.backward()
            model.zero_grad(set_to_none=True)
            fast.lora_weights_changed()  # as after an optimiser step: the next step makes fresh copies
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {name: [] for name, *_ in VARIANTS}
        for _, v, f in VARIANTS:  # warm-up
            step(v, f)
        for _ in range(args.rounds):
            for name, v, f in VARIANTS:
                times[name].append(step(v, f))
        stock = statistics.median(times["stock"])
        print(f"\nrow of {len(lens)} examples, {total} tokens ({spec}), {args.rounds} rounds:")
        for name, *_ in VARIANTS:
            med = statistics.median(times[name])
            print(f"  {name:24s} {med:7.2f} s/step  ({med / stock:.2f}x stock)  "
                  f"[{', '.join(f'{t:.1f}' for t in times[name])}]")


if __name__ == "__main__":
    main()
