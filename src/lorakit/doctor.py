"""`lorakit doctor`: probe this machine, then estimate what a LoRA run will cost here and recommend settings.

Estimates come from the model's config alone (a meta-device model: no weights are loaded), so they are instant.
"""
from __future__ import annotations

import importlib.metadata as md
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

LIBS = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "gguf", "bitsandbytes")
# Share of the probed matmul speed a training step reaches on small batches (measured: see README).
CPU_EFFICIENCY = 0.35
GPU_EFFICIENCY = 0.25


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA), in MB."""
    if device == "cuda":
        import torch
        return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def memory_gb() -> tuple[float, float]:
    import psutil
    vm = psutil.virtual_memory()
    return vm.total / 2 ** 30, vm.available / 2 ** 30


# ------------------------------------------------------------------------------------------------ probe
@dataclass
class Probe:
    system: str
    cpu: str
    cores: int
    ram_total_gb: float
    ram_free_gb: float
    device: str
    gpus: list[dict] = field(default_factory=list)
    dtypes: dict = field(default_factory=dict)  # dtype → GFLOP/s or None when it fails
    precision: str = ""
    libraries: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def probe() -> Probe:
    import torch

    from lorakit.models import pick_device, pick_precision
    from lorakit.models.load import matmul_speed
    from lorakit.models.presets import PRESETS, is_pulled

    total, free = memory_gb()
    device = pick_device()
    p = Probe(system=f"{platform.system()} {platform.release()} ({platform.machine()}), Python "
                     f"{platform.python_version()}", cpu=cpu_name(), cores=len(os.sched_getaffinity(0)) if hasattr(
                  os, "sched_getaffinity") else os.cpu_count() or 1, ram_total_gb=round(total, 1),
              ram_free_gb=round(free, 1), device=device)
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            free_b, total_b = torch.cuda.mem_get_info(i)
            p.gpus.append({"name": prop.name, "vram_gb": round(total_b / 2 ** 30, 1),
                           "free_gb": round(free_b / 2 ** 30, 1), "capability": f"{prop.major}.{prop.minor}"})
    for dt in ("float32", "bfloat16", "float16"):
        speed = matmul_speed(device, dt)
        p.dtypes[dt] = round(speed, 1) if speed else None
    p.precision = pick_precision(device).why
    for lib in LIBS:
        try:
            p.libraries[lib] = md.version(lib)
        except md.PackageNotFoundError:
            p.libraries[lib] = None
    p.presets = {name: is_pulled(name) for name in PRESETS}
    return p


def probe_table(p: Probe) -> Table:
    t = Table(title="lorakit doctor: this machine", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("found", overflow="fold")
    flags = cpu_flags()
    extras = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    t.add_row("system", p.system)
    t.add_row("CPU", f"{p.cpu}, {p.cores} cores" + (f" ({', '.join(extras)})" if extras else ""))
    t.add_row("memory", f"{p.ram_total_gb} GB total, {p.ram_free_gb} GB available")
    t.add_row("accelerator", ", ".join(f"{g['name']} ({g['free_gb']}/{g['vram_gb']} GB free, sm {g['capability']})"
                                       for g in p.gpus) or ("Apple MPS" if p.device == "mps" else "none (CPU)"))
    speeds = ", ".join(f"{k}: {v:,.0f} GFLOP/s" if v else f"{k}: does not run" for k, v in p.dtypes.items())
    t.add_row(f"matmul probe ({p.device})", speeds)
    t.add_row("precision chosen", p.precision)
    t.add_row("libraries", ", ".join(f"{k} {v}" if v else f"{k} [dim]absent[/]" for k, v in p.libraries.items()))
    t.add_row("presets pulled", ", ".join(f"{k} {'[green]yes[/]' if v else 'no'}" for k, v in p.presets.items()))
    return t


# ------------------------------------------------------------------------------------------------ estimate
@dataclass
class Estimate:
    model: str
    total_params: int
    trainable_params: int
    adapted_modules: int
    module_kinds: list[str]
    r: int
    alpha: float
    scale: float
    weights_gb: float
    optimizer_gb: float
    activations_gb: float
    peak_gb: float
    tokens_per_epoch: int
    seconds_per_epoch: float | None
    tokens_per_second: float | None
    precision: str
    rslora: bool = False
    recommendations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def explain(self) -> str:
        pct = 100 * self.trainable_params / max(1, self.total_params)
        kinds = ", ".join(self.module_kinds)
        return (f"LoRA with r={self.r} on {len(self.module_kinds)} projection kinds ({kinds}; {self.adapted_modules} "
                f"matrices in all) trains {self.trainable_params / 1e6:.2f} M of {self.total_params / 1e6:.0f} M "
                f"parameters, {pct:.2f} %. Each frozen matrix W (out × in) gets a side path B·A with B (out × "
                f"{self.r}) and A ({self.r} × in), added with scale {self._scale_formula()} = "
                f"{self.scale:g}; only A and B get gradients and Adam state, which is why the optimizer needs "
                f"{self.optimizer_gb * 1024:.0f} MB instead of {self.total_params * 12 / 2 ** 30:.1f} GB for a full "
                f"fine-tune.")

    def _scale_formula(self) -> str:
        return (f"alpha/sqrt(r) = {self.alpha:g}/sqrt({self.r})" if self.rslora
                else f"alpha/r = {self.alpha:g}/{self.r}")

    def render(self) -> str:
        lines = [self.explain(),
                 f"memory estimate: weights {self.weights_gb:.2f} GB + LoRA state {self.optimizer_gb:.2f} GB + "
                 f"activations {self.activations_gb:.2f} GB ≈ peak {self.peak_gb:.1f} GB"]
        if self.seconds_per_epoch is not None:
            lines.append(f"time estimate: {self.tokens_per_epoch:,} tokens per epoch at ~{self.tokens_per_second:,.0f} "
                         f"tokens/s ≈ {fmt_seconds(self.seconds_per_epoch)} per epoch ({self.precision})")
        lines += [f"recommend: {r}" for r in self.recommendations]
        return "\n".join(lines)


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _meta_model(model_path: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(str(model_path))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


def estimate(model_path: Path, cfg, *, n_tokens: int = 0, precision=None) -> Estimate:
    """Trainable parameters, memory and time per epoch for ``cfg`` (a TrainConfig) on ``model_path``."""
    import torch.nn as nn

    from lorakit.models import pick_precision
    from lorakit.models.load import matmul_speed
    model, config = _meta_model(model_path)
    precision = precision or pick_precision(requested=cfg.precision)
    total = sum(p.numel() for p in model.parameters())
    out_emb = model.get_output_embeddings()
    targets = cfg.lora.targets
    adapted, kinds, lora_params = 0, [], 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or mod is out_emb:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if targets != "all-linear" and leaf not in targets:
            continue
        adapted += 1
        lora_params += cfg.lora.r * (mod.in_features + mod.out_features)
        if cfg.lora.dora:
            lora_params += mod.out_features
        if leaf not in kinds:
            kinds.append(leaf)
    full = cfg.method == "full"
    trainable = total if full else lora_params
    wbytes = 2 if precision.weights == "bfloat16" else 4
    if cfg.method == "qlora":
        wbytes = 0.56
    weights_gb = total * wbytes / 2 ** 30
    optimizer_gb = trainable * (4 + 4 + 8) / 2 ** 30  # fp32 weight + grad + two Adam moments
    hidden = getattr(config, "hidden_size", 512)
    layers = getattr(config, "num_hidden_layers", 12)
    vocab = getattr(config, "vocab_size", 32000)
    inter = getattr(config, "intermediate_size", 4 * hidden)
    tokens_per_batch = cfg.batch_size * min(cfg.max_length, 256 if n_tokens == 0 else cfg.max_length)
    act_bytes = 2 if precision.autocast else 4
    per_token_layer = (10 * hidden + 3 * inter) * act_bytes  # saved activations per token per layer (approx.)
    activations = tokens_per_batch * layers * per_token_layer
    if cfg.gradient_checkpointing:
        activations = tokens_per_batch * (layers * hidden * act_bytes + per_token_layer)
    activations += tokens_per_batch * vocab * 4 * 0.6  # logits at supervised positions (fp32) + their grad
    activations_gb = activations / 2 ** 30
    peak = weights_gb * 1.1 + optimizer_gb + activations_gb + 0.6  # + framework and tokenizer
    flops_per_token = 4 * total + 6 * trainable
    speed = matmul_speed(precision.device, precision.autocast or precision.weights)
    eff = GPU_EFFICIENCY if precision.device == "cuda" else CPU_EFFICIENCY
    tps = speed * 1e9 * eff / flops_per_token if speed else None
    secs = n_tokens / tps if (tps and n_tokens) else None
    scale = cfg.lora.alpha / (math.sqrt(cfg.lora.r) if cfg.lora.rslora else cfg.lora.r)
    est = Estimate(model=str(model_path), total_params=total, trainable_params=trainable, adapted_modules=adapted,
                   module_kinds=kinds, r=cfg.lora.r, alpha=cfg.lora.alpha, scale=round(scale, 4), rslora=cfg.lora.rslora,
                   weights_gb=round(weights_gb, 2), optimizer_gb=round(optimizer_gb, 3),
                   activations_gb=round(activations_gb, 2), peak_gb=round(peak, 2), tokens_per_epoch=n_tokens,
                   seconds_per_epoch=round(secs, 1) if secs else None, tokens_per_second=round(tps, 1) if tps else None,
                   precision=precision.why)
    est.recommendations = recommend(est, cfg, precision)
    return est


def recommend(est: Estimate, cfg, precision) -> list[str]:
    out = []
    if precision.device == "cuda":
        import torch
        avail = torch.cuda.mem_get_info()[0] / 2 ** 30
    else:
        avail = memory_gb()[1]
    if est.peak_gb > 0.85 * avail:
        out.append(f"the estimated peak ({est.peak_gb:.1f} GB) is close to the {avail:.1f} GB available: lower "
                   f"batch_size (now {cfg.batch_size}) and raise grad_accum, or set gradient_checkpointing: true")
    else:
        spare = max(1, int((0.6 * avail - est.weights_gb - est.optimizer_gb) / max(est.activations_gb, 1e-3)))
        bs = min(cfg.batch_size * spare, 16 if precision.device != "cuda" else 64)
        if bs > cfg.batch_size and precision.device == "cuda":
            out.append(f"memory allows batch_size {bs} (now {cfg.batch_size})")
        elif cfg.gradient_checkpointing:
            out.append("gradient_checkpointing costs ~25-30 % speed and is not needed here: set it to false")
    if precision.device == "cpu":
        out.append("on CPU keep answers short and max_length ≤ 512; padding_free batches avoid paying for pad tokens")
        out.append(f"precision: {'bf16 autocast' if precision.autocast else 'fp32'} ({precision.why})")
    if precision.device == "mps" and not precision.autocast:
        out.append("MPS: fp32 (bf16 is not reliable on every macOS version); keep batch_size ≤ 4")
    if cfg.method == "qlora" and precision.device != "cuda":
        out.append("QLoRA needs CUDA: use method: lora here")
    return out


def run_doctor(model: str | None, cfg, n_tokens: int, console: Console) -> tuple[Probe, Estimate | None]:
    p = probe()
    console.print(probe_table(p))
    est = None
    if model:
        from lorakit.models import resolve
        path = resolve(model, console=console)
        est = estimate(path, cfg, n_tokens=n_tokens)
        console.print(f"\n[bold]Estimate for {model}[/] (r={cfg.lora.r}, alpha={cfg.lora.alpha:g}, targets "
                      f"{cfg.lora.targets}, batch {cfg.batch_size}, max_length {cfg.max_length}):")
        console.print(est.render(), soft_wrap=True)
    return p, est


def count_tokens(model: str, data, cfg) -> int:
    """Tokens of a dataset under the model's chat template (what one epoch processes)."""
    from lorakit.data.formats import read_records
    from lorakit.data.tokenize import assistant_spans
    from lorakit.models import load_tokenizer, resolve
    tok = load_tokenizer(resolve(model))
    return sum(min(cfg.max_length, len(assistant_spans(tok, c.messages())[0])) for c in read_records(data))
