"""Device and dtype choice: what was requested, what the hardware really runs fast."""
from __future__ import annotations

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.models import load as load_mod
from lorakit.models import pick_device, pick_precision
from lorakit.models.load import Precision, matmul_speed


def _speeds(monkeypatch, table):
    monkeypatch.setattr(load_mod, "matmul_speed", lambda device, dtype, *a, **k: table[dtype])


def test_cpu_with_fast_bf16_uses_bf16_autocast(monkeypatch):
    _speeds(monkeypatch, {"float32": 100.0, "bfloat16": 400.0})
    p = pick_precision("cpu")
    # Frozen weights may be stored in bf16 or fp32; either way the matmuls run under bf16 autocast.
    assert (p.device, p.autocast) == ("cpu", "bfloat16") and p.weights in ("float32", "bfloat16")
    assert "4.0×" in p.why
    assert p.torch_weights in (torch.float32, torch.bfloat16) and p.torch_autocast is torch.bfloat16


@pytest.mark.parametrize("bf16", [120.0, 20.0, None])
def test_cpu_without_clearly_faster_bf16_uses_fp32(monkeypatch, bf16):
    _speeds(monkeypatch, {"float32": 100.0, "bfloat16": bf16})
    p = pick_precision("cpu")
    assert (p.weights, p.autocast) == ("float32", None)
    assert p.torch_autocast is None
    assert ("unsupported" in p.why) == (bf16 is None)


def test_requested_precisions_skip_the_probe(monkeypatch):
    monkeypatch.setattr(load_mod, "matmul_speed", lambda *a, **k: pytest.fail("probed although requested"))
    assert pick_precision("cpu", "fp32") == Precision("cpu", "float32", None, "requested fp32")
    bf16 = pick_precision("cpu", "bf16")
    assert bf16.autocast == "bfloat16" and bf16.weights in ("float32", "bfloat16")
    fp16 = pick_precision("cpu", "fp16")
    assert (fp16.weights, fp16.autocast) == ("float32", "float16")


def test_invalid_precision_is_a_lorakit_error():
    with pytest.raises(LorakitError) as e:
        pick_precision("cpu", "int4")
    assert e.value.field == "precision" and "auto, fp32, bf16 or fp16" in e.value.render()


@pytest.mark.parametrize("bf16_ok,expect", [(True, ("bfloat16", "bfloat16")), (False, ("float32", "float16"))])
def test_cuda_choice_follows_bf16_support(monkeypatch, bf16_ok, expect):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    monkeypatch.setattr(load_mod, "matmul_speed", lambda *a, **k: pytest.fail("CUDA needs no probe"))
    p = pick_precision("cuda")
    assert (p.weights, p.autocast) == expect


def test_pick_device_order(monkeypatch):
    monkeypatch.delenv("LORAKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == "cuda"
    monkeypatch.setenv("LORAKIT_DEVICE", "cpu")
    assert pick_device() == "cpu"


def test_auto_precision_uses_the_picked_device(monkeypatch):
    monkeypatch.setenv("LORAKIT_DEVICE", "cpu")
    _speeds(monkeypatch, {"float32": 100.0, "bfloat16": 100.0})
    assert pick_precision().device == "cpu"


def test_matmul_speed_measures_and_reports_failure():
    assert matmul_speed.__wrapped__("cpu", "float32", n=64, reps=2) > 0
    assert matmul_speed.__wrapped__("no-such-device", "float32", n=8, reps=1) is None
