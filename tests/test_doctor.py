"""`lorakit doctor`: the machine probe, and estimates that agree with what PEFT really builds."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lorakit import doctor
from lorakit.config import TrainConfig
from lorakit.models.load import Precision

CPU_FP32 = Precision("cpu", "float32", None, "test fp32")
CPU_BF16 = Precision("cpu", "float32", "bfloat16", "test bf16 autocast")

# The default preset's architecture (Qwen2.5-Coder-0.5B-Instruct as lorakit caches it: untied head, 630 M).
QWEN05_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "hidden_act": "silu",
}


def cfg(**lora) -> TrainConfig:
    extra = {k: lora.pop(k) for k in ("method", "batch_size", "max_length", "gradient_checkpointing") if k in lora}
    return TrainConfig(model="x", data="x.jsonl", lora=lora, **extra)


def peft_trainable(model_dir, r, targets, dora) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, use_dora=dora,
                                            task_type="CAUSAL_LM"))
    return peft.get_nb_trainable_parameters()[0]


@pytest.fixture(autouse=True)
def _fixed_speed(monkeypatch):
    """Estimates read the matmul probe; a fixed speed keeps them deterministic (and the tests fast)."""
    from lorakit.models import load
    monkeypatch.setattr(load, "matmul_speed", lambda device, dtype, *a, **k: 100.0)


@pytest.mark.parametrize("r,targets,dora", [
    (8, "all-linear", False),
    (4, ["q_proj", "v_proj"], False),
    (16, ["q_proj", "k_proj", "v_proj", "o_proj"], False),
    (8, "all-linear", True),
    (2, ["gate_proj", "up_proj", "down_proj"], True),
])
def test_trainable_params_match_peft(tiny_model, r, targets, dora):
    est = doctor.estimate(tiny_model, cfg(r=r, targets=targets, dora=dora), precision=CPU_FP32)
    assert est.trainable_params == peft_trainable(tiny_model, r, targets, dora)
    assert est.r == r and est.adapted_modules > 0
    kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(est.module_kinds) == (kinds if targets == "all-linear" else set(targets))


def test_estimate_fields_and_explanation(tiny_model):
    est = doctor.estimate(tiny_model, cfg(r=8, alpha=16), n_tokens=50_000, precision=CPU_FP32)
    from transformers import AutoModelForCausalLM
    total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny_model)).parameters())
    assert est.total_params == total
    assert est.scale == 2.0
    assert est.peak_gb > 0 and est.activations_gb > 0 and est.weights_gb >= 0 and est.optimizer_gb >= 0
    assert est.tokens_per_second > 0 and est.seconds_per_epoch == pytest.approx(50_000 / est.tokens_per_second, abs=0.06)
    pct = 100 * est.trainable_params / est.total_params
    text = est.explain()
    assert "r=8" in text and f"{pct:.2f} %" in text and "alpha/r = 16/8 = 2" in text
    rendered = est.render()
    assert "memory estimate" in rendered and "time estimate" in rendered and "recommend: " in rendered
    assert json.loads(json.dumps(est.as_dict()))["trainable_params"] == est.trainable_params


def test_estimate_for_the_default_model_architecture(tmp_path):
    """From config alone (meta device: no weights): 630 M parameters, about 2.3 GB of fp32 weights."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN05_CONFIG))
    est = doctor.estimate(tmp_path, cfg(r=8), n_tokens=100_000, precision=CPU_FP32)
    assert 620e6 < est.total_params < 640e6
    assert est.weights_gb == pytest.approx(est.total_params * 4 / 2 ** 30, abs=0.01)
    assert est.adapted_modules == 24 * 7
    # r=8 all-linear on Qwen2.5-0.5B is ~4.4 M trainable parameters (PEFT's own count for this model).
    assert est.trainable_params == 24 * 8 * (2 * (896 + 896) + 2 * (896 + 128) + 3 * (896 + 4864))
    assert 0 < est.optimizer_gb < 0.1 and est.activations_gb > 0.1 and est.peak_gb > est.weights_gb
    assert est.seconds_per_epoch > 0
    bf16 = doctor.estimate(tmp_path, cfg(r=8), precision=Precision("cpu", "bfloat16", "bfloat16", "x"))
    assert bf16.weights_gb == pytest.approx(est.weights_gb / 2, abs=0.01)
    ckpt = doctor.estimate(tmp_path, cfg(r=8, gradient_checkpointing=True), precision=CPU_FP32)
    assert ckpt.activations_gb < est.activations_gb
    full = doctor.estimate(tmp_path, cfg(r=8, method="full"), precision=CPU_FP32)
    assert full.trainable_params == full.total_params and full.optimizer_gb > 9


def test_recommendations(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(QWEN05_CONFIG))
    monkeypatch.setattr(doctor, "memory_gb", lambda: (64.0, 60.0))
    recs = doctor.estimate(tmp_path, cfg(r=8, gradient_checkpointing=True), precision=CPU_BF16).recommendations
    assert any("gradient_checkpointing" in r and "not needed" in r for r in recs)
    assert any(r.startswith("precision: bf16 autocast") for r in recs)
    recs = doctor.estimate(tmp_path, cfg(r=8, method="qlora"), precision=CPU_FP32).recommendations
    assert any("QLoRA needs CUDA" in r for r in recs)
    monkeypatch.setattr(doctor, "memory_gb", lambda: (4.0, 2.0))
    recs = doctor.estimate(tmp_path, cfg(r=8), precision=CPU_FP32).recommendations
    assert any("close to the 2.0 GB available" in r for r in recs)


def test_probe_fills_libraries_dtypes_and_presets():
    p = doctor.probe()
    assert p.cores >= 1 and p.ram_total_gb > 0 and p.device in ("cpu", "cuda", "mps")
    assert set(p.dtypes) == {"float32", "bfloat16", "float16"} and p.dtypes["float32"] > 0
    for lib in ("torch", "transformers", "peft", "trl", "gguf"):
        assert p.libraries[lib], lib
    assert "tiny-random" in p.presets and p.precision
    from rich.console import Console
    con = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
    con.print(doctor.probe_table(p))
    text = con.export_text()
    assert "matmul probe" in text and "torch " in text


def test_fmt_seconds_and_peak_memory():
    assert doctor.fmt_seconds(12) == "12 s" and doctor.fmt_seconds(600) == "10.0 min"
    assert doctor.fmt_seconds(7200) == "2.0 h"
    assert doctor.peak_memory_mb("cpu") > 0


def test_doctor_cli_with_tiny_preset(tmp_path, monkeypatch):
    from lorakit.cli import app
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "闯红灯扣几分？"},
                                             {"role": "assistant", "content": "记6分，罚款200元。"}]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "doctor.json"
    result = CliRunner().invoke(app, ["doctor", "--model", "tiny-random", "--r", "4", "--data", str(data),
                                      "--json", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Estimate for tiny-random" in result.stdout and "r=4" in result.stdout
    assert "time estimate" in result.stdout
    report = json.loads(out.read_text())
    assert report["estimate"]["r"] == 4 and report["estimate"]["tokens_per_epoch"] > 0
    assert report["machine"]["libraries"]["torch"]


def test_doctor_cli_without_model(tmp_path, monkeypatch):
    from lorakit.cli import app
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "lorakit doctor" in result.stdout and "Estimate for" not in result.stdout
