"""Benchmark: the built-in server's generation tokens/s at concurrency 1, 8 and 32, batched against one at a time.

Both servers run in this process on 127.0.0.1 with the same model; the baseline is the same server with
``max_batch=1`` (one request generated at a time, as the server did before batching). Each level sends
``level × rounds`` requests from ``level`` concurrent clients (bounded in count; a 600 s cap on each level) and
prints completion tokens per second of wall time and the ratio batched / one-at-a-time. Not a timed test.

    python benchmarks/serve_concurrency.py [--model PRESET_OR_FOLDER] [--levels 1,8,32] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

QUESTIONS = ["酒后驾驶会受到什么处罚？", "闯红灯一次扣几分？", "驾驶证到期了忘记换证怎么办？", "高速公路上车坏了应该怎么做？",
             "What should a driver do at a pedestrian crossing?", "电动自行车可以载人吗？", "超速百分之五十怎么处罚？",
             "发生交通事故后可以先挪车吗？"]


async def level_run(url: str, model: str, level: int, rounds: int, max_tokens: int) -> tuple[float, int, int]:
    import httpx
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=level + 4)) as c:
        async def client(k: int):
            tokens = errors = 0
            for r in range(rounds):
                q = QUESTIONS[(k + r) % len(QUESTIONS)]
                res = await c.post(url + "/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens})
                if res.status_code == 200:
                    tokens += res.json()["usage"]["completion_tokens"]
                else:
                    errors += 1
            return tokens, errors
        t0 = time.perf_counter()
        out = await asyncio.wait_for(asyncio.gather(*[client(k) for k in range(level)]), 600)
        return time.perf_counter() - t0, sum(t for t, _ in out), sum(e for _, e in out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=1, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lorakit.serve.server import Limits, Served, Systems, build_app
    levels = [int(x) for x in args.levels.split(",")]
    systems = Systems(args.model, {})
    import platform
    print(f"model {args.model}, max_tokens {args.max_tokens}, {os.cpu_count()} CPUs ({platform.processor() or '?'})")
    print(f"{'concurrency':>11} {'one at a time tok/s':>20} {'batched tok/s':>14} {'ratio':>6}  errors")
    for level in levels:
        row = []
        for batch in (1, max(levels)):
            s = Served(build_app(systems, limits=Limits(max_batch=batch, max_queue=1000, timeout_s=600,
                                                        max_tokens=args.max_tokens)))
            try:
                wall, tokens, errors = asyncio.run(level_run(s.url, systems.base_name, level, args.rounds,
                                                             args.max_tokens))
            finally:
                s.stop()
            row.append((tokens / wall, errors))
        print(f"{level:>11} {row[0][0]:>20.1f} {row[1][0]:>14.1f} {row[1][0] / row[0][0]:>6.2f}  "
              f"{row[0][1] + row[1][1]}", flush=True)


if __name__ == "__main__":
    main()
