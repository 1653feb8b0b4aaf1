"""Inference performance of base, adapter and merged model on the same prompts: latency, time to first token,
decode tokens/s and peak memory. Each variant is measured the same way (streaming greedy decode, one prompt at a
time, after one warm-up prompt) so that the adapter's overhead and what merging buys back are visible."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class Perf:
    name: str
    load_s: float
    latency_s: float  # mean seconds for a whole answer
    ttft_s: float  # mean seconds to the first streamed text
    decode_tps: float  # generated tokens per second after the first token
    new_tokens: float  # mean tokens generated
    peak_mb: float


def _mean(xs) -> float:
    """Mean of the measured values (NaN ones left out); NaN when there are none (every answer was one piece)."""
    xs = [x for x in xs if x == x]
    return statistics.mean(xs) if xs else float("nan")


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def measure(name: str, loader, tokenizer, prompts: list[list[dict]], *, precision, max_new_tokens: int) -> Perf:
    import torch

    from lorakit.serve.chat import stream_reply
    cuda = precision.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = loader()
    load_s = time.perf_counter() - t0
    peak = _rss_mb()
    lat, ttft, tps, lens = [], [], [], []
    for i, msgs in enumerate([prompts[0]] + prompts):  # the first is a warm-up
        out: dict = {}
        start = time.perf_counter()
        first = None
        for piece in stream_reply(model, tokenizer, msgs, precision=precision, max_new_tokens=max_new_tokens,
                                  result=out):
            if first is None and piece:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        n = len(out["ids"])
        peak = max(peak, _rss_mb())
        if i == 0:
            continue
        first = first if first is not None else total
        lat.append(total)
        ttft.append(first)
        lens.append(n)
        tps.append((n - 1) / (total - first) if n > 1 and total > first else float("nan"))
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    return Perf(name, round(load_s, 2), round(statistics.mean(lat), 3), round(statistics.mean(ttft), 3),
                round(_mean(tps), 1), round(statistics.mean(lens), 1), round(peak, 0))


def measure_gguf(name: str, gguf: str | Path, prompts: list[list[dict]], *, max_new_tokens: int) -> Perf:
    """The same measurement for an exported GGUF run by llama.cpp (its own chat template and stop tokens)."""
    from lorakit.serve.engines.llamacpp import LlamaCpp
    t0 = time.perf_counter()
    engine = LlamaCpp(gguf, n_ctx=2048)
    load_s = time.perf_counter() - t0
    peak = _rss_mb()
    lat, ttft, tps, lens = [], [], [], []
    for i, msgs in enumerate([prompts[0]] + prompts):  # the first is a warm-up
        ids = engine.prompt_ids(msgs)
        start = time.perf_counter()
        first, n = None, 0
        for token in engine.tokens(ids):
            n += 1
            first = first if first is not None else time.perf_counter() - start
            if token in engine.stop_ids or n >= max_new_tokens:
                break
        total = time.perf_counter() - start
        peak = max(peak, _rss_mb())
        if i == 0:
            continue
        lat.append(total)
        ttft.append(first or total)
        lens.append(n)
        tps.append((n - 1) / (total - first) if n > 1 and total > first else float("nan"))
    engine.close()
    return Perf(name, round(load_s, 2), round(statistics.mean(lat), 3), round(statistics.mean(ttft), 3),
                round(_mean(tps), 1), round(statistics.mean(lens), 1), round(peak, 0))


def perf(model: str, data: str | Path, *, adapter: str | Path | None = None, merged: str | Path | None = None,
         gguf: list[str | Path] = (), n: int = 5, max_new_tokens: int = 64,
         console: Console | None = None) -> list[Perf]:
    from lorakit.data.formats import read_records
    from lorakit.errors import LorakitError
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import set_threads
    console = console or Console(stderr=True)
    set_threads()
    records = [r for r in read_records(data) if r.prompt][:n]
    if not records:
        raise LorakitError("no record with a question to time", file=data)
    prompts = [r.prompt_messages() for r in records]
    path = resolve(model, console=console)
    tok = load_tokenizer(path)
    precision = pick_precision()
    variants = [("base", lambda: load_model(path, precision))]
    if adapter:
        variants.append(("adapter", lambda: load_model(path, precision, adapter=adapter)))
    if merged:
        mpath = resolve(str(merged), console=console)
        variants.append(("merged", lambda: load_model(mpath, precision)))
    results = []
    with console.status("timing…") as status:
        for name, loader in variants:
            status.update(f"timing {name} on {len(prompts)} prompts…")
            results.append(measure(name, loader, tok, prompts, precision=precision, max_new_tokens=max_new_tokens))
        for path in gguf:
            status.update(f"timing {Path(path).name} in llama.cpp on {len(prompts)} prompts…")
            results.append(measure_gguf(f"{Path(path).stem} (llama.cpp)", path, prompts,
                                        max_new_tokens=max_new_tokens))
    return results


def perf_table(results: list[Perf]) -> Table:
    t = Table(title="inference performance (greedy, one prompt at a time, streaming)",
              caption="* CUDA: peak allocated by that variant; CPU: peak resident memory of this process so far; "
                      "× base: decode tokens/s against the base model in transformers")
    for col in ("variant", "load s", "latency s", "TTFT s", "decode tok/s", "× base", "new tokens", "peak MB*"):
        t.add_column(col, justify="right" if col != "variant" else "left")
    base = next((r.decode_tps for r in results if r.name == "base"), None)
    for r in results:
        t.add_row(r.name, f"{r.load_s:.2f}", f"{r.latency_s:.3f}", f"{r.ttft_s:.3f}", f"{r.decode_tps:.1f}",
                  f"{r.decode_tps / base:.2f}" if base else "", f"{r.new_tokens:.1f}", f"{r.peak_mb:,.0f}")
    return t


def as_dicts(results: list[Perf]) -> list[dict]:
    return [asdict(r) for r in results]
