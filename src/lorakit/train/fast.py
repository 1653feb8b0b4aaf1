"""The training fast path: the pieces that make a LoRA step cheaper than the stock transformers + PEFT one.

Each piece is switched by `fast:` in the run config (None = automatic) and measured on its own by
benchmarks/gpu_speed.py:

- fused loss: the LM head and cross-entropy run chunk by chunk and the gradient is formed in the forward, so the
  (tokens × vocabulary) logits never exist. Liger's Triton kernel on CUDA; the same algorithm in torch elsewhere.
- kernels: Liger's RMSNorm, RoPE and SwiGLU (CUDA only; the optional `cuda` extra).
- fused LoRA: one autograd function per adapted linear computes `base(x) + s·B(A(x))` in the activations' dtype.
  PEFT instead casts every activation to the fp32 adapter dtype and autocast casts it back (two large copies per
  projection, forward and backward); here only the small A and B are cast, the fp32 masters stay with the optimiser.
  With the LoRA cache those compute copies are made once per optimiser step, not at every call (a global optimiser
  step hook marks them stale: torch's fused AdamW updates the masters without bumping their version counters).
- async logs (trainer.py): a logging step copies its numbers off the GPU without waiting; they are logged one step
  later, so the host never drains the GPU's queue.
- varlen attention: padding-free rows go through `torch.nn.attention.varlen.varlen_attn` (flash, one kernel per
  layer for the whole packed row) instead of SDPA with a dense block mask.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import types
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

VARLEN = "lorakit_varlen"  # the attention implementation name registered with transformers
# CPU rows of at most this many tokens go through one SDPA call with a block mask (per-example calls measured 8 %
# slower on a 355-token row of four examples, 31 % faster on a 2,400-token one; benchmarks/cpu_steps.py)
MASKED_UNDER = 512
OWN_LIGER_LOOP = True  # False: Liger's own fused linear cross-entropy function (benchmarks/gpu_speed.py compares)


@dataclass(frozen=True)
class FastPath:
    fused_loss: str | None  # "liger", "torch" or None
    kernels: bool
    fused_lora: bool
    varlen: bool
    loader_workers: int = 0
    lora_cache: bool = False
    async_logs: bool = False
    compile: bool = False

    def describe(self) -> str:
        on = [f"fused loss ({self.fused_loss})" if self.fused_loss else "",
              "Liger RMSNorm/RoPE/SwiGLU" if self.kernels else "",
              ("fused LoRA" + (" (cached copies)" if self.lora_cache else "")) if self.fused_lora else "",
              "varlen attention" if self.varlen else "",
              f"{self.loader_workers} loader processes" if self.loader_workers else "",
              "async logs" if self.async_logs else "", "compiled layers" if self.compile else ""]
        return ", ".join(x for x in on if x) or "off"

    def as_dict(self) -> dict:
        return asdict(self)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def varlen_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def resolve(settings, device: str, method: str, world: int = 1, padding_free: bool = False,
            fsdp: bool = False) -> FastPath:
    """Turn `fast:` settings (None = auto) into the pieces used on this device.

    Automatic choices on CUDA: the fused loss (Liger when installed, else torch) except under FSDP, whose sharded
    head weight it cannot use; Liger kernels when installed; fused LoRA for plain LoRA; varlen attention for
    padding-free batches (padding-free itself is decided by recipe.resolve_padding_free); the LoRA compute-copy
    cache with fused LoRA; async logs with one CUDA process. On the CPU: fused LoRA (with the cache) and, for
    padding-free rows over MASKED_UNDER tokens, one causal flash SDPA call per example instead of SDPA with a dense
    block mask, whose CPU backward was 38 % of a step on rows of four RAFT records (benchmarks/cpu_steps.py on a
    2-core AMX Xeon: 2,400-token row 28.4 -> 18.7 s, 355-token row unchanged). The torch fused loss stays off on
    the CPU: measured slower there (10.3 vs 9.4 s). Loader processes stay off by default: on an
    H200 two of them made a 0.5B step slower (74k vs 93k tokens/s). Compiled layers are opt-in (`fast.compile`):
    on an H200 they ran 1.17x the steady tokens/s at 0.5B (110.5k vs 94.4k) and 12.6k vs 10.4k-12.1k at 7B, but
    compiling (with recompiles in steps 2-3) cost ~50 s, which a 0.5B run only earns back after ~1,000 steps."""
    cuda = device == "cuda"
    loss = settings.fused_loss
    if loss is None:
        loss = cuda and not fsdp
    fused_loss = ("liger" if cuda and liger_available() else "torch") if loss else None
    compiled = bool(settings.compile)
    # compiled layers: inductor fuses the norms, rotary and SwiGLU itself (Liger's kernels only if asked for)
    kernels = settings.kernels if settings.kernels is not None else (cuda and liger_available() and not compiled)
    if kernels and not (cuda and liger_available()):
        from lorakit.errors import LorakitError
        raise LorakitError("fast.kernels needs an NVIDIA GPU and the liger-kernel package", field="fast.kernels",
                           hint="pip install 'lorakit[cuda]' on a CUDA machine, or leave fast.kernels unset")
    cpu = device == "cpu"
    lora = settings.fused_lora if settings.fused_lora is not None else (cuda or cpu)
    fused_lora = bool(lora) and method in ("lora", "qlora")
    varlen = padding_free and settings.varlen is not False and (
        (cuda and varlen_available()) or cpu or bool(settings.varlen))
    if settings.varlen and cuda and not varlen_available():
        from lorakit.errors import LorakitError
        raise LorakitError("fast.varlen on CUDA needs torch >= 2.10 (torch.nn.attention.varlen)",
                           field="fast.varlen", hint="Leave fast.varlen unset")
    workers = settings.loader_workers or 0
    cache = fused_lora and settings.lora_cache is not False and not compiled  # the cache is host logic: a graph break
    # deferred log reads pay where the device runs ahead of the host (CUDA), and need one process (no collective at
    # a logging step); on the CPU only when asked for (the same numbers, for tests)
    async_logs = world == 1 and (settings.async_logs if settings.async_logs is not None else cuda)
    return FastPath(fused_loss, bool(kernels), fused_lora, varlen, workers, cache, async_logs, compiled)


# ---------------------------------------------------------------------------------------------------- kernels
def apply_kernels(model) -> None:
    """Liger's RMSNorm, RoPE and SwiGLU in place of the model's own (before PEFT wraps the model)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


# ---------------------------------------------------------------------------------------------------- LoRA
class LoraLinearFn(torch.autograd.Function):
    """y = base_out + (x A^T)(s·B)^T in base_out's dtype, from compute copies ac = A and bs = s·B in that dtype;
    the grads of the masters A and B are returned in their own (fp32) dtype."""

    @staticmethod
    def forward(ctx, base_out, x, a, b, ac, bs, scale):
        with torch.autocast(x.device.type, enabled=False):
            xc = x.reshape(-1, x.shape[-1]).to(ac.dtype)
            h = xc @ ac.t()
            y = torch.addmm(base_out.reshape(-1, base_out.shape[-1]), h, bs.t())
        ctx.save_for_backward(xc, h, ac, bs)
        ctx.scale, ctx.x_shape, ctx.x_dtype, ctx.dtypes = scale, x.shape, x.dtype, (a.dtype, b.dtype)
        return y.view(base_out.shape)

    @staticmethod
    def backward(ctx, gy):
        xc, h, ac, bs = ctx.saved_tensors
        with torch.autocast(gy.device.type, enabled=False):
            g = gy.reshape(-1, gy.shape[-1]).to(h.dtype)
            # beta=0: addmm ignores its input (bs only lends the shape; no zeros tensor, no host-side cache)
            gb = torch.addmm(bs, g.t(), h, beta=0, alpha=ctx.scale) if ctx.needs_input_grad[3] else None
            gh = g @ bs  # s·B folded into the compute copy
            ga = gh.t() @ xc if ctx.needs_input_grad[2] else None
            gx = (gh @ ac).view(ctx.x_shape).to(ctx.x_dtype) if ctx.needs_input_grad[1] else None
        return (gy, gx, None if ga is None else ga.to(ctx.dtypes[0]), None if gb is None else gb.to(ctx.dtypes[1]),
                None, None, None)


class _Generation:
    """Counts optimiser steps (all optimisers, through torch's global step hook): a LoRA compute copy made in an
    earlier generation is stale. Fused/foreach optimisers write the parameters without bumping their version
    counters, so the counter alone cannot tell; both are checked. `lora_weights_changed()` marks every copy stale
    after any other write that bypasses autograd's version counter (`p.data.mul_`, say)."""

    def __init__(self):
        self.value = 0
        self.hooked = False

    def bump(self, *_args, **_kwargs):
        self.value += 1

    def hook(self):
        if not self.hooked:
            from torch.optim.optimizer import register_optimizer_step_post_hook
            register_optimizer_step_post_hook(self.bump)
            self.hooked = True


_GEN = _Generation()


def lora_weights_changed() -> None:
    """Every cached LoRA compute copy is stale from now on."""
    _GEN.bump()


def _compute_copies(layer, name: str, a, b, scale, dtype):
    """(A, s·B) in `dtype`, without autograd history; with the cache, made once per generation and weight version."""
    if not getattr(layer, "_lorakit_cache", False):
        with torch.no_grad():
            return a.detach().to(dtype), (b.detach() * scale).to(dtype)
    key = (_GEN.value, a._version, b._version, a.data_ptr(), b.data_ptr(), dtype, scale, name)
    hit = layer.__dict__.get("_lorakit_copies")
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    with torch.no_grad():
        ac, bs = a.detach().to(dtype), (b.detach() * scale).to(dtype)
    layer.__dict__["_lorakit_copies"] = (key, ac, bs)
    return ac, bs


def _fused_lora_forward(self, x, *args, **kwargs):
    """PEFT's lora.Linear.forward for the common case (one plain adapter, not merged); anything else goes to PEFT."""
    active = self.active_adapters
    if (self.disable_adapters or self.merged or args or kwargs or len(active) != 1
            or active[0] not in self.lora_A or active[0] in self.lora_variant):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    result = self.base_layer(x)
    dropout = self.lora_dropout[name]
    xd = x if isinstance(dropout, torch.nn.Identity) else dropout(x)
    a, b, scale = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    ac, bs = _compute_copies(self, name, a, b, scale, result.dtype)
    return LoraLinearFn.apply(result, xd, a, b, ac, bs, scale)


def fuse_lora(model, cache: bool = False) -> int:
    """Route every PEFT lora.Linear through LoraLinearFn; returns how many layers were changed. With `cache` the
    compute copies of A and s·B are kept between calls and made again after each optimiser step."""
    from peft.tuners.lora.layer import Linear
    if cache:
        _GEN.hook()
    n = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(_fused_lora_forward, module)
            module.__dict__["_lorakit_cache"] = cache
            module.__dict__.pop("_lorakit_copies", None)
            n += 1
    return n


def compile_layers(model) -> int:
    """torch.compile every decoder layer in place (one graph reused by all layers of a shape); returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    n = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.compile()
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------- loss
class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of (hidden @ weight^T) against target, chunk by chunk; grads are made in the forward.

    The same algorithm as Liger's fused linear cross-entropy, in torch, so that it runs on any device. Also returns
    the number of correctly predicted targets (no grad)."""

    @staticmethod
    def forward(ctx, hidden, weight, target, ignore_index, chunk):
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_w = None
        if weight.requires_grad:  # full fine-tuning of the head (LoRA leaves it frozen)
            grad_w = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32),
                                 device=weight.device)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # logits and loss at least in fp32
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(hidden.dtype)
            for s in range(0, n, chunk):
                h = hidden[s:s + chunk]
                t = target[s:s + chunk]
                logits = (h @ w.t()).to(acc)
                valid = t != ignore_index
                tt = t.clamp(min=0)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, tt[:, None]).squeeze(1)
                loss += torch.where(valid, lse - picked, 0.0).sum()
                correct += ((logits.argmax(-1) == t) & valid).sum()
                if grad_h is None and grad_w is None:
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad.scatter_add_(1, tt[:, None], -torch.ones_like(picked)[:, None])
                grad.mul_(valid[:, None])
                gl = grad.to(hidden.dtype)
                if grad_h is not None:
                    grad_h[s:s + chunk] = gl @ w
                if grad_w is not None:
                    grad_w += gl.t().to(grad_w.dtype) @ h.to(grad_w.dtype)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w) if g is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, g_loss, _g_correct):
        saved = list(ctx.saved_tensors)
        gh = gw = None
        if ctx.has[0]:
            grad_h = saved.pop(0)
            gh = grad_h * g_loss.to(grad_h.dtype)
        if ctx.has[1]:
            gw = (saved.pop(0) * g_loss).to(ctx.weight_dtype)
        return gh, gw, None, None, None


class LigerChunkedCE(torch.autograd.Function):
    """Liger's fused linear cross-entropy algorithm (chunk logits = h W^T, Liger's Triton kernel turns them into the
    loss and, in place, the logits' gradient, then grad_h = grad_logits W), with two changes for a training loop
    that never waits for the GPU: no `.item()` (Liger reads the count of trained tokens on the host in the forward,
    and compares the upstream gradient with 1 on the host in the backward: two syncs per step; the sum needs
    neither), and chunks of ~2^29 logits instead of N·H (at 0.5B, 8 matmuls of 4096 rows instead of 128 of 256).
    Sum of losses; frozen head (LoRA): no weight gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, target, ignore_index, chunk):
        from liger_kernel.ops.cross_entropy import liger_cross_entropy_kernel
        n, v = hidden.shape[0], weight.shape[0]
        hidden = hidden.contiguous()
        target = target.contiguous()
        grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
        loss_1d = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        hit_1d = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        buf = torch.empty((min(chunk, n), v), dtype=hidden.dtype, device=hidden.device)
        block = min(32768, 1 << (v - 1).bit_length())
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = buf[:e - s]
            torch.mm(hidden[s:e], weight.t(), out=logits)
            liger_cross_entropy_kernel[(e - s,)](
                X_ptr=logits, X_stride=logits.stride(-2), Y_ptr=target[s:e], Y_stride=1, weight_ptr=None,
                loss_ptr=loss_1d[s:e], z_loss_ptr=None, loss_stride=1, token_accuracy_ptr=hit_1d[s:e],
                token_accuracy_stride=1, predicted_tokens_ptr=None, predicted_tokens_stride=0, n_cols=v,
                n_non_ignore=1.0, sum_non_ignore_weight=1.0, weight_sum=0.0, ignore_index=ignore_index,
                lse_square_scale=0.0, label_smoothing=0.0, reduction="sum", softcap=None, RETURN_Z_LOSS=False,
                RETURN_TOKEN_ACCURACY=True, RETURN_PREDICTED_TOKENS=False, BLOCK_SIZE=block, HAS_WEIGHT=False,
                HAS_SOFTCAPPING=False, HAS_GRADIENTS=grad_h is not None, num_warps=32)
            if grad_h is not None:
                torch.mm(logits, weight, out=grad_h[s:e])
        if grad_h is not None:
            ctx.save_for_backward(grad_h)
        correct = hit_1d.sum().round().long()
        ctx.mark_non_differentiable(correct)
        return loss_1d.sum(), correct

    @staticmethod
    def backward(ctx, g_loss, _g_correct):
        (grad_h,) = ctx.saved_tensors
        return grad_h * g_loss.to(grad_h.dtype), None, None, None, None


def linear_cross_entropy(hidden, weight, target, kind: str = "torch", ignore_index: int = -100, chunk: int = 0):
    """(sum of token losses, correctly predicted tokens) for hidden (N, H), head weight (V, H), target (N,).

    The head runs in the weight's dtype (bf16 weights: a bf16 matmul, as under autocast); accelerate hands the model
    outputs back in fp32, which here are the small hidden states, not the logits."""
    hidden = hidden.to(weight.dtype)
    if kind == "liger" and OWN_LIGER_LOOP and hidden.is_cuda and not weight.requires_grad:
        if not chunk:  # ~1 GiB of bf16 logits a chunk, a power of two rows
            chunk = 1 << max(8, min(14, ((2 ** 29) // max(1, weight.shape[0])).bit_length() - 1))
        with torch.autocast("cuda", enabled=False):
            return LigerChunkedCE.apply(hidden, weight, target, ignore_index, chunk)
    if kind == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        out = liger_fused_linear_cross_entropy(hidden, weight, target, ignore_index=ignore_index, reduction="sum",
                                               return_token_accuracy=True)
        n = (target != ignore_index).sum()
        return out.loss, torch.nan_to_num(out.token_accuracy.detach() * n).round().long()
    if not chunk:  # about 64 MB of fp32 logits a chunk
        chunk = max(8, min(4096, (16 * 2 ** 20) // max(1, weight.shape[0])))
    return ChunkedLinearCrossEntropy.apply(hidden, weight, target, ignore_index, chunk)


@contextlib.contextmanager
def head_emits_hidden(model):
    """Within the block the model's output embedding returns its input: `outputs.logits` holds the final hidden
    states (at `logits_to_keep`), for a fused loss to use with the head's weight. The call still goes through the
    wrapped model (DDP hooks fire)."""
    head = output_head(model)
    head.forward = types.MethodType(lambda self, x: x, head)
    try:
        yield head
    finally:
        del head.forward


def output_head(model):
    inner = getattr(model, "module", model)  # DDP
    return inner.get_output_embeddings()


# ---------------------------------------------------------------------------------------------------- attention
def _varlen_kernel():
    from torch.nn.attention.varlen import varlen_attn
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, params


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     max_length_q=None, **kwargs):
    """transformers attention function for padding-free rows: (1, H, T, D) with `cu_seq_lens_q` from TRL's
    padding-free collator → causal attention within each example. Other calls fall back to SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if cu_seq_lens_q is None or query.shape[0] != 1 or kwargs.get("sliding_window") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
    rep = query.shape[1] // key.shape[1]
    if query.is_cuda and varlen_available():
        q = query[0].transpose(0, 1).contiguous()  # (T, H, D), as the kernel takes them
        k = key[0].transpose(0, 1).contiguous()
        v = value[0].transpose(0, 1).contiguous()
        fn, params = _varlen_kernel()
        extra = {}
        if "enable_gqa" in params and rep > 1:
            extra["enable_gqa"] = True
        elif rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if "window_size" in params:
            extra["window_size"] = (-1, 0)
        else:
            extra["is_causal"] = True
        if "scale" in params:
            extra["scale"] = scaling
        elif scaling is not None and abs(scaling * q.shape[-1] ** 0.5 - 1) > 1e-6:
            q = q * (scaling * q.shape[-1] ** 0.5)
        max_len = int(max_length_q) if max_length_q is not None else int((cu[1:] - cu[:-1]).max())
        out = fn(q, k, v, cu, cu, max_len, max_len, **extra)
        return out.unsqueeze(0), None
    # the CPU (any device without the kernel), on (1, H, T, D) as given. The key/value heads are repeated up front:
    # with enable_gqa, or on 3-D inputs, the CPU takes the math kernel (bmm + softmax, T×T scores kept for backward)
    if rep > 1:
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if query.shape[2] <= MASKED_UNDER:  # a short row: one SDPA call with its block mask beats a call per example
        seg = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=query.device), (cu[1:] - cu[:-1]).long())
        pos = torch.arange(query.shape[2], device=query.device)
        mask = (seg[:, None] == seg[None, :]) & (pos[:, None] >= pos[None, :])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[None, None], scale=scaling)
    else:  # one causal SDPA call per example: the CPU flash kernel, no T×T mask
        bounds = cu.tolist()
        out = torch.cat([F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                        is_causal=True, scale=scaling)
                         for s, e in zip(bounds[:-1], bounds[1:]) if e > s], dim=2)
    return out.transpose(1, 2), None  # (1, T, H, D), as transformers' attention functions return it


def use_varlen(model) -> None:
    """Register the varlen attention function with transformers and switch the model to it."""
    from transformers import AttentionInterface
    AttentionInterface.register(VARLEN, varlen_attention)
    model.set_attn_implementation(VARLEN)


# ---------------------------------------------------------------------------------------------------- batches
class StepBatches:
    """Wraps a collator: adds what the loss needs, computed on the host while the batch is still there, so the
    step never waits for the GPU to learn it: the positions whose next token is trained (`lorakit_keep`) and the
    number of real tokens (`lorakit_tokens`)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        shift = batch["labels"][:, 1:]
        keep = (shift != -100).any(dim=0).nonzero().squeeze(-1)
        if keep.numel() == 0:
            keep = torch.zeros(1, dtype=torch.long)
        batch["lorakit_keep"] = keep
        mask = batch.get("attention_mask")
        batch["lorakit_tokens"] = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch
