"""Benchmark: the general probe's multiple-choice scoring, baseline and lorakit side by side, and the whole
`lorakit eval --general` flow (goal: base + one adapter in under 3 minutes on 2 cores). Not a timed test.

    python benchmarks/general_probe.py [--model qwen2.5-coder-0.5b-instruct] [--items 21] [--adapter RUN]

baseline: every option scored as its own full sequence (prompt + option), the way a log-likelihood scorer
without a cache does it. lorakit: `score_replies`, every (item, option) row in a
few large left-padded passes after the shared prefix's cache (computed once). Both run on the same every-k-th items and must pick the same
options; the script prints seconds per item, the ratio, and CPU seconds (on a machine shared with other jobs,
CPU time says more than wall time). With --adapter it then times `general_compare` (base + that adapter,
all 210 items, text loss, open answers) end to end.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--items", type=int, default=21, help="Items to time both ways (every k-th of the probe).")
    ap.add_argument("--adapter", default=None, help="Run folder: also time the whole flow with this adapter.")
    args = ap.parse_args()

    import torch

    from lorakit.evaluate import general as G
    from lorakit.evaluate.generate import autocast_ctx
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import set_threads

    threads = set_threads()
    path = resolve(args.model)
    tok, prec = load_tokenizer(path), pick_precision()
    model = load_model(path, prec)
    items = G.load_items()
    items = items[:: max(1, len(items) // args.items)][: args.items]
    prompts = [G.prompt_ids(tok, it.messages()) for it in items]

    def baseline() -> list[int]:
        picks = []
        for it, prompt in zip(items, prompts):
            scores = []
            for reply in it.replies():
                ids = tok(reply, add_special_tokens=False)["input_ids"]
                with torch.no_grad(), autocast_ctx(model, prec):
                    logits = model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
                lp = torch.log_softmax(logits, -1)
                scores.append(sum(lp[len(prompt) + t - 1, ids[t]].item() for t in range(len(ids))))
            picks.append(max(range(len(scores)), key=scores.__getitem__))
        return picks

    def lorakit() -> list[int]:
        prefix = G.shared_prefix(model, prompts, precision=prec)
        return [max(range(len(s)), key=s.__getitem__)
                for s in G.score_replies(model, tok, prompts, [it.replies() for it in items], precision=prec,
                                         prefix=prefix)]

    G.score_replies(model, tok, prompts[:1], [items[0].replies()], precision=prec)  # warm-up
    timings = {}
    for name, fn in (("baseline", baseline), ("lorakit", lorakit)):
        t0, c0 = time.perf_counter(), time.process_time()
        picks = fn()
        timings[name] = (time.perf_counter() - t0, time.process_time() - c0, picks)
    n = len(items)
    print(f"{args.model} · {prec.why} · {threads} threads · {n} items")
    for name, (wall, cpu, _) in timings.items():
        print(f"{name:9} {wall / n:6.3f} s/item wall  {cpu / n:6.3f} CPU s/item")
    agree = sum(a == b for a, b in zip(timings["baseline"][2], timings["lorakit"][2]))
    print(f"lorakit / baseline: {timings['baseline'][0] / timings['lorakit'][0]:.2f}x faster (wall), "
          f"{timings['baseline'][1] / timings['lorakit'][1]:.2f}x less CPU; same picks on {agree} of {n} items")
    if args.adapter:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = G.general_compare(args.model, [args.adapter])
        print(f"general_compare, base + 1 adapter, {len(rep.items)} items: {time.perf_counter() - t0:.0f} s wall, "
              f"{time.process_time() - c0:.0f} CPU s (goal: under 180 s on 2 cores)")
        for s in rep.systems:
            r = rep.row(s)
            print(f"  {s.name}: accuracy {r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], "
                  f"text loss {s.text_loss:.3f}, {s.seconds:.0f} s")


if __name__ == "__main__":
    main()
