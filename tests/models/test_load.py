"""Loading: a folder, a .gguf (converted once, then cached), corrupt or missing inputs, tokenizer, model, adapter."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.io import cache_home
from lorakit.models import gguf as gguf_mod
from lorakit.models import load_model, load_tokenizer, resolve
from lorakit.models.load import Precision

FP32 = Precision("cpu", "float32", None, "test")


def _logits(path, ids=None):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.no_grad():
        return model(ids if ids is not None else torch.arange(3, 40)[None]).logits


def _converted_leftovers() -> list[str]:
    root = cache_home() / "converted"
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


# ------------------------------------------------------------------------------------------------ resolve
def test_resolve_folder_is_returned_as_is(tiny_model):
    assert resolve(str(tiny_model)) == tiny_model


def test_resolve_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(LorakitError, match="no config.json"):
        resolve(str(tmp_path))


def test_resolve_gguf_converts_once_then_uses_the_cache(tiny_model, tiny_gguf, tmp_path, monkeypatch):
    src = tmp_path / "copy.gguf"
    shutil.copy2(tiny_gguf, src)
    calls = []
    real = gguf_mod.convert_gguf

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(gguf_mod, "convert_gguf", counting)
    first = resolve(str(src))
    assert len(calls) == 1
    assert first.parent == cache_home() / "converted" and first.name.startswith("copy-")
    assert (first / "config.json").exists() and (first / "tokenizer.json").exists()
    assert resolve(str(src)) == first
    assert len(calls) == 1, "the second resolve converted again"
    # The converted folder is the same model: identical logits to the folder the GGUF was written from.
    assert torch.equal(_logits(first), _logits(tiny_model))
    tok = load_tokenizer(first)
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"
    assert "<|im_start|>" in tok.chat_template
    # A changed file (new mtime/size) is converted again rather than served stale.
    src.write_bytes(tiny_gguf.read_bytes())
    os.utime(src, ns=(1, 1))
    assert resolve(str(src)) != first
    assert len(calls) == 2
    assert _converted_leftovers() == []


def test_converted_model_has_no_gguf_quantizer(tiny_gguf):
    model = load_model(resolve(str(tiny_gguf)), FP32, trainable=True)
    assert getattr(model, "hf_quantizer", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("kind", ["random", "magic_then_garbage", "truncated", "empty", "bad_version"])
def test_corrupt_gguf_is_a_lorakit_error_and_leaves_nothing(kind, tiny_gguf, tmp_path):
    blob = tiny_gguf.read_bytes()
    data = {
        "random": os.urandom(4096),
        "magic_then_garbage": b"GGUF\x03\x00\x00\x00" + os.urandom(4096),
        "truncated": blob[: len(blob) // 2],
        "empty": b"",
        "bad_version": b"GGUF\x09\x00\x00\x00" + blob[8:],
    }[kind]
    bad = tmp_path / f"{kind}.gguf"
    bad.write_bytes(data)
    with pytest.raises(LorakitError) as e:
        resolve(str(bad))
    text = e.value.render()
    assert str(bad) in text and "\n" not in text
    assert _converted_leftovers() == []
    assert not [p for p in (cache_home() / "converted").glob(f"{kind}-*")] if (cache_home() / "converted").exists() else True


def test_gguf_without_suffix_is_detected_by_magic(tiny_gguf, tmp_path):
    src = tmp_path / "weights.bin"
    shutil.copy2(tiny_gguf, src)
    out = resolve(str(src))
    assert out.parent == cache_home() / "converted" and (out / "config.json").exists()


def test_missing_gguf_file(tmp_path):
    with pytest.raises(LorakitError, match="does not exist"):
        resolve(str(tmp_path / "nope.gguf"))


@pytest.mark.parametrize("ref", ["/no/such/model", "./no_such_dir/model", "model.safetensors"])
def test_wrong_path_is_a_lorakit_error(ref):
    with pytest.raises(LorakitError) as e:
        resolve(ref)
    assert "no such model file or folder" in e.value.render()
    assert e.value.field == "model"


def test_unknown_preset_name_lists_presets():
    with pytest.raises(LorakitError) as e:
        resolve("no-such-preset")
    assert "unknown preset" in e.value.render() and "tiny-random" in e.value.render()


def test_resolve_preset_name_pulls_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    out = resolve("tiny-random")
    assert out == tmp_path / "models" / "tiny-random" and (out / "config.json").exists()


# ------------------------------------------------------------------------------------------------ tokenizer / model
def test_load_tokenizer_keeps_own_template_and_sets_pad(tiny_model):
    tok = load_tokenizer(tiny_model)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.pad_token_id is not None


def test_load_tokenizer_from_folder_without_one(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(LorakitError, match="tokenizer"):
        load_tokenizer(tmp_path)


def test_load_model_without_weights(tmp_path, tiny_model):
    shutil.copy2(tiny_model / "config.json", tmp_path / "config.json")
    with pytest.raises(LorakitError, match="causal language model"):
        load_model(tmp_path, FP32)


def test_load_model_for_inference_and_training(tiny_model):
    model = load_model(tiny_model, FP32)
    assert not model.training and torch.is_grad_enabled()  # global grad mode is left to the caller
    assert next(model.parameters()).device.type == "cpu"
    model = load_model(tiny_model, FP32, trainable=True)
    assert not model.training  # from_pretrained returns eval mode; the Trainer switches to train()


def test_load_model_in_bf16_weights(tiny_model):
    model = load_model(tiny_model, Precision("cpu", "bfloat16", "bfloat16", "test"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_attach_adapter_from_adapter_or_run_folder(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model, FP32, trainable=True)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run = tmp_path / "run"
    peft.save_pretrained(run / "adapter")
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        want = peft(ids).logits
        plain = load_model(tiny_model, FP32)(ids).logits
    for where in (run, run / "adapter"):
        model = load_model(tiny_model, FP32, adapter=where)
        with torch.no_grad():
            got = model(ids).logits
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really changes the model


def test_attach_adapter_missing(tiny_model, tmp_path):
    with pytest.raises(LorakitError, match="adapter_config.json"):
        load_model(tiny_model, FP32, adapter=tmp_path)


def test_output_layer_gets_contiguous_hidden_states_in_generate(tiny_model):
    """generate() slices the prompt's last position (a strided view); load_model makes the output layer see it
    contiguous (torch's CPU linear on the strided 3-D view copies the head's weight once per row), with the
    same logits, for the base model and under a PEFT adapter."""
    from peft import LoraConfig, get_peft_model

    from lorakit.models import Precision, load_model, load_tokenizer
    fp32 = Precision("cpu", "float32", None, "test")
    model, tok = load_model(tiny_model, fp32), load_tokenizer(tiny_model)
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    x = torch.randn(3, 7, model.config.hidden_size)
    sliced = x[:, -1:, :]
    assert not sliced.is_contiguous()
    assert torch.allclose(head(sliced), torch.nn.functional.linear(sliced.contiguous(), head.weight))
    assert seen == [True]
    enc = tok(["酒驾怎么罚？", "闯红灯记几分？要交多少罚款"], return_tensors="pt", padding=True)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    seen.clear()
    with torch.no_grad():
        peft.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert seen and all(seen)
