"""The training recipe on the tiny model: options, mask, packing, early stopping, errors before loading."""
import json

import pytest
import torch

from lorakit.config import TrainConfig
from lorakit.errors import LorakitError
from lorakit.train import recipe


def run(cfg: dict, **kw):
    return recipe.train(TrainConfig(**cfg), **kw)


def test_train_writes_run_folder(base_cfg):
    res = run({**base_cfg, "name": "r1", "eval_ratio": 0.25})
    d = res.run_dir
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png", "adapter/adapter_config.json",
              "adapter/adapter_model.safetensors"):
        assert (d / f).exists(), f
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "finished" and s["global_step"] == 5 and s["eval_loss"] is not None
    assert s["tokens_seen"] > 0 and s["trainable_params"] < s["total_params"]
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]


def test_loss_goes_down(base_cfg):
    res = run({**base_cfg, "name": "down", "epochs": 6, "learning_rate": 1e-2})
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3


@pytest.mark.parametrize("opts", [
    {"lora": {"dora": True}},
    {"lora": {"rslora": True, "r": 4, "alpha": 8}},
    {"lora": {"targets": ["q_proj", "v_proj"], "dropout": 0.1}},
    {"method": "full"},
    {"packing": True, "max_length": 128},
    {"padding_free": False},
    {"gradient_checkpointing": True},
    {"completion_only": False},
    {"scheduler": "linear", "grad_accum": 2, "warmup_ratio": 0.2},
    {"precision": "bf16"},
])
def test_options_run(base_cfg, opts):
    res = run({**base_cfg, "name": "opt", "max_steps": 2, **opts})
    s = res.summary
    assert s["global_step"] == 2 and s["train_loss"] == s["train_loss"]  # finite, not NaN
    if opts.get("method") == "full":
        assert s["trainable_params"] == s["total_params"]
        assert (res.run_dir / "model" / "config.json").exists()
    else:
        cfg = json.loads((res.run_dir / "adapter" / "adapter_config.json").read_text())
        lora = opts.get("lora", {})
        assert cfg["use_dora"] == lora.get("dora", False) and cfg["use_rslora"] == lora.get("rslora", False)
        if "targets" in lora:
            assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]


def test_labels_are_assistant_span_plus_end_of_turn(tiny_dir, base_cfg):
    from lorakit.data.formats import read_records
    from lorakit.models import load_tokenizer
    tok = load_tokenizer(tiny_dir)
    recs = read_records(base_cfg["data"])[:3]
    enc = recipe.encode(recs, tok, TrainConfig(**base_cfg))
    for rec, row in zip(recs, enc.rows):
        trained = [t for t in row["labels"] if t != -100]
        assert tok.decode(trained) == rec.answer + "<|im_end|>"
    # with completion_only off everything is trained
    enc = recipe.encode(recs, tok, TrainConfig(**{**base_cfg, "completion_only": False}))
    assert all(all(t != -100 for t in r["labels"]) for r in enc.rows)


def test_multi_turn_last_only(tiny_dir, base_cfg):
    from lorakit.data.record import Conversation
    from lorakit.models import load_tokenizer
    tok = load_tokenizer(tiny_dir)
    conv = Conversation.from_messages([{"role": "user", "content": "一"}, {"role": "assistant", "content": "甲答"},
                                       {"role": "user", "content": "二"}, {"role": "assistant", "content": "乙答"}])
    all_turns = recipe.encode([conv], tok, TrainConfig(**base_cfg)).rows[0]["labels"]
    last = recipe.encode([conv], tok, TrainConfig(**{**base_cfg, "train_turns": "last"})).rows[0]["labels"]
    assert tok.decode([t for t in all_turns if t != -100]) == "甲答<|im_end|>乙答<|im_end|>"
    assert tok.decode([t for t in last if t != -100]) == "乙答<|im_end|>"


def test_padding_free_batch_has_no_cross_example_attention(tiny_dir):
    """Logits of two examples packed in one row (position_ids restart) equal their logits run separately."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    a = torch.randint(5, 400, (1, 11))
    b = torch.randint(5, 400, (1, 7))
    with torch.no_grad():
        la = model(input_ids=a).logits
        lb = model(input_ids=b).logits
        packed = torch.cat([a, b], 1)
        pos = torch.cat([torch.arange(11), torch.arange(7)])[None]
        lp = model(input_ids=packed, position_ids=pos, use_cache=False).logits  # training runs without a cache
    torch.testing.assert_close(lp[:, :11], la, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lp[:, 11:], lb, atol=1e-5, rtol=1e-4)


def test_loss_equals_plain_cross_entropy(tiny_dir, base_cfg):
    """The logits-only-where-needed loss equals the model's own full-logits loss on a padding-free batch."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from lorakit.data.formats import read_records
    from lorakit.models import load_tokenizer
    from lorakit.train.trainer import LorakitTrainer
    tok = load_tokenizer(tiny_dir)
    cfg = TrainConfig(**base_cfg)
    enc = recipe.encode(read_records(base_cfg["data"])[:4], tok, cfg)
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(enc.rows)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_dir)), recipe.peft_config(cfg))

    class Stub:
        args = type("A", (), {"average_tokens_across_devices": False})()
        accelerator = type("Acc", (), {"gather_for_metrics": staticmethod(lambda x: x), "num_processes": 1})()
        _metrics = {"train": {"mean_token_accuracy": [], "num_tokens": []}}
        _total_train_tokens = 0
        fast = None
        _pending = {}
    ours = LorakitTrainer.compute_loss(Stub(), model, dict(batch))
    ref = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                use_cache=False).loss  # without a cache, transformers isolates the packed examples
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_early_stopping(base_cfg):
    res = run({**base_cfg, "name": "early", "eval_ratio": 0.25, "eval_steps": 1, "early_stopping_patience": 1,
               "epochs": 20, "learning_rate": 5.0})
    assert res.summary["global_step"] < res.summary["max_steps"]


def test_bad_data_fails_before_model_loads(tmp_path, base_cfg, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
                   '{"messages": [{"role": "assistant", "content": "b"}, {"role": "user", "content": "a"}]}\n',
                   encoding="utf-8")
    monkeypatch.setattr("lorakit.models.resolve", lambda *a, **k: pytest.fail("model loaded before data check"))
    with pytest.raises(LorakitError) as e:
        run({**base_cfg, "data": str(bad)})
    assert "bad.jsonl:2" in e.value.render()


def test_refuses_when_nothing_is_trained(tmp_path, base_cfg):
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "问" * 300},
                                          {"role": "assistant", "content": "答"}]}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        run({**base_cfg, "data": str(f), "max_length": 64}, dry_run=True)
    assert "no trained token" in e.value.render() and "long.jsonl:1" in e.value.render()


def test_dry_run_loads_no_model(base_cfg, monkeypatch, capsys):
    monkeypatch.setattr("lorakit.train.recipe.load_for_training", lambda *a, **k: pytest.fail("model loaded"))
    from rich.console import Console
    res = run(base_cfg, dry_run=True, console=Console(file=None, width=120))
    assert res.summary["dry_run"] and res.summary["steps"] == 6
    assert res.summary["supervised_tokens"] > 0


def test_dry_run_mask_shows_chinese_whole(base_cfg):
    """Byte-level tokens split Chinese characters; the mask view decodes runs of tokens so none shows as U+FFFD."""
    import io

    from rich.console import Console
    out = Console(file=io.StringIO(), width=200)
    run(base_cfg, dry_run=True, console=out)
    text = out.file.getvalue()
    assert "超速" in text and "道路交通安全法" in text and "\ufffd" not in text


def test_qlora_on_cpu_is_a_clear_error(base_cfg):
    with pytest.raises(LorakitError) as e:
        run({**base_cfg, "method": "qlora"})
    assert "NVIDIA GPU" in e.value.render()


def test_tensorboard_without_package_is_a_clear_error(base_cfg, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    with pytest.raises(LorakitError) as e:
        run({**base_cfg, "tensorboard": True})
    assert "pip install tensorboard" in e.value.render()


def test_bad_eval_data_fails_before_model_loads(tmp_path, base_cfg, monkeypatch):
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"messages": [{"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}]}\n',
                   encoding="utf-8")
    monkeypatch.setattr("lorakit.models.resolve", lambda *a, **k: pytest.fail("model loaded before data check"))
    with pytest.raises(LorakitError) as e:
        run({**base_cfg, "eval_data": str(bad)})
    assert "eval.jsonl:1" in e.value.render()
