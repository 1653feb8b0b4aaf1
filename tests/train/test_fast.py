"""The training fast path on CPU, where the math is device-independent: each piece equals the stock computation."""
import json

import pytest
import torch
import torch.nn.functional as F

from lorakit.config import TrainConfig
from lorakit.train import fast, recipe


def test_chunked_linear_cross_entropy_equals_full_logits():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(101, 16, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 101, (37,))
    target[::5] = -100
    loss, correct = fast.linear_cross_entropy(hidden, weight, target, chunk=8)  # 5 chunks, the last one short
    (2 * loss).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = hidden @ weight.t()
    ref = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    (2 * ref).backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, hidden.grad)
    torch.testing.assert_close(gw, weight.grad)
    assert int(correct) == int(((logits.argmax(-1) == target) & (target != -100)).sum())


def _lora_grads(tiny_dir, dtype, fused: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                             init_lora_weights=False))  # B ≠ 0, so every gradient is exercised
    if fused:
        assert fast.fuse_lora(model) == 14  # 7 projections × 2 layers
    ids = torch.randint(5, 400, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # fp32 masters
    return loss.item(), grads


def test_fused_lora_equals_peft(tiny_dir):
    """fp32: same loss and gradients; bf16: no further from the fp32 result than PEFT's own bf16 path."""
    ref_loss, ref = _lora_grads(tiny_dir, torch.float32, fused=False)
    loss, grads = _lora_grads(tiny_dir, torch.float32, fused=True)
    assert abs(loss - ref_loss) < 1e-6
    for k in ref:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-5, atol=1e-7)

    def err(g):
        return sum((g[k] - ref[k]).norm() for k in ref) / sum(ref[k].norm() for k in ref)
    _, peft_bf16 = _lora_grads(tiny_dir, torch.bfloat16, fused=False)
    _, fused_bf16 = _lora_grads(tiny_dir, torch.bfloat16, fused=True)
    assert err(fused_bf16) <= 1.25 * err(peft_bf16) + 1e-3


@pytest.mark.parametrize("masked_under", [0, 10_000])
def test_varlen_attention_isolates_packed_examples(tiny_dir, monkeypatch, masked_under):
    """A packed row through the varlen attention function (CPU: one causal SDPA per example, or for short rows one
    call with the block mask) gives each example's own logits and gradients, with the cu_seq_lens TRL's
    padding-free collator adds."""
    monkeypatch.setattr(fast, "MASKED_UNDER", masked_under)
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    a, b = torch.randint(5, 400, (11,)).tolist(), torch.randint(5, 400, (7,)).tolist()
    with torch.no_grad():
        la = model(input_ids=torch.tensor([a])).logits
        lb = model(input_ids=torch.tensor([b])).logits
        fast.use_varlen(model)
        assert model.config._attn_implementation == fast.VARLEN
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
            [{"input_ids": a}, {"input_ids": b}])
        batch.pop("labels")
        lp = model(**batch, use_cache=False).logits
    torch.testing.assert_close(lp[:, :11], la, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lp[:, 11:], lb, atol=1e-5, rtol=1e-4)
    # and the gradients: the packed row's loss backpropagates as the two examples' losses do
    model.set_attn_implementation("sdpa")
    (model(input_ids=torch.tensor([a])).logits.sum() + model(input_ids=torch.tensor([b])).logits.sum()).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    fast.use_varlen(model)
    model(**batch, use_cache=False).logits.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-4, rtol=1e-3)


def test_resolve_picks_pieces_per_device():
    s = TrainConfig(data="x.jsonl").fast
    cpu = fast.resolve(s, "cpu", "lora", padding_free=True)  # CPU: fused LoRA, per-example flash attention
    assert cpu.fused_lora and cpu.lora_cache and cpu.varlen and not cpu.fused_loss and not cpu.kernels
    assert not fast.resolve(s, "cpu", "lora", padding_free=False).varlen
    assert not fast.resolve(s, "mps", "lora", padding_free=True).fused_lora  # MPS: stock, as measured before
    on = TrainConfig(data="x.jsonl", fast={"fused_loss": True, "fused_lora": True, "varlen": False}).fast
    cpu = fast.resolve(on, "cpu", "lora", padding_free=True)
    assert cpu.fused_loss == "torch" and cpu.fused_lora and not cpu.kernels and not cpu.varlen
    assert fast.resolve(on, "cpu", "full").fused_lora is False
    assert fast.resolve(s, "cuda", "lora", fsdp=True).fused_loss is None  # FSDP shards the head weight
    gpu = fast.resolve(s, "cuda", "lora", padding_free=True)  # decided without touching a GPU
    assert gpu.varlen == fast.varlen_available() and gpu.loader_workers == 0
    assert gpu.fused_loss == ("liger" if fast.liger_available() else "torch")
    off = TrainConfig(data="x.jsonl", fast={"fused_loss": False, "fused_lora": False, "varlen": False}).fast
    assert fast.resolve(off, "cpu", "lora", padding_free=True).describe() == "off"
    from lorakit.errors import LorakitError
    with pytest.raises(LorakitError, match="fast.kernels"):
        fast.resolve(TrainConfig(data="x.jsonl", fast={"kernels": True}).fast, "cpu", "lora")


def _curve(res) -> list[float]:
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_fast_path_loss_curve_matches_stock(base_cfg, precision, tol):
    """Whole training runs: the fast path's loss curve is the stock path's (exact in fp32, bf16 noise in bf16)."""
    cfg = {**base_cfg, "epochs": 2, "precision": precision, "eval_ratio": 0.2}
    on = recipe.train(TrainConfig(**{**cfg, "name": "on", "fast": {"fused_loss": True, "fused_lora": True}}))
    off = recipe.train(TrainConfig(**{**cfg, "name": "off", "fast": {"fused_loss": False, "fused_lora": False,
                                                                     "varlen": False}}))
    assert on.summary["fast_path"]["fused_loss"] == "torch" and on.summary["fast_path"]["fused_lora"]
    assert on.summary["fast_path"]["varlen"] and not off.summary["fast_path"]["varlen"]  # padding-free on the CPU
    a, b = _curve(on), _curve(off)
    assert len(a) == len(b) == on.summary["global_step"]
    assert max(abs(x - y) / y for x, y in zip(a, b)) < tol, (a, b)
    assert abs(on.summary["eval_loss"] - off.summary["eval_loss"]) / off.summary["eval_loss"] < tol
    assert on.summary["tokens_seen"] == off.summary["tokens_seen"] > 0
    assert on.summary["tokens_per_second_steady"] > 0


def _fused_steps(tiny_dir, cache: bool, steps: int = 4) -> list[float]:
    """A few steps of fused LoRA under torch's fused AdamW (which writes the masters without bumping their version
    counters): the cached compute copies must follow every update."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))  # B = 0 at start
    fast.fuse_lora(model, cache=cache)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, fused=True)
    ids = torch.randint(5, 400, (2, 13), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_lora_cache_follows_fused_adamw(tiny_dir):
    cached, fresh = _fused_steps(tiny_dir, cache=True), _fused_steps(tiny_dir, cache=False)
    assert cached == fresh
    assert cached[-1] < cached[0] - 1e-3  # the adapter learns (B starts at zero: a stale copy would keep it there)


def test_async_logs_log_the_same_numbers(base_cfg):
    """Deferred log reads (forced on the CPU) write the same metrics.jsonl rows, each with its own step."""
    cfg = {**base_cfg, "epochs": 2}
    keys = ("step", "loss", "grad_norm", "learning_rate", "mean_token_accuracy", "num_tokens", "epoch")

    def rows(res):
        lines = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: r.get(k) for k in keys} for r in lines if "loss" in r]
    on = recipe.train(TrainConfig(**{**cfg, "name": "on", "fast": {"async_logs": True}}))
    off = recipe.train(TrainConfig(**{**cfg, "name": "off", "fast": {"async_logs": False}}))
    assert on.summary["fast_path"]["async_logs"] and not off.summary["fast_path"]["async_logs"]
    assert rows(on) == rows(off) and len(rows(on)) == on.summary["global_step"]
    assert on.summary["train_loss"] == off.summary["train_loss"]
