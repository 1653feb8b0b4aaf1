"""The GGUF writer: transformers reads its files back as the same model, tokenizer and chat template."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.models.gguf import check_gguf_header
from lorakit.models.gguf_writer import write_gguf

TEXT = "根据道路交通安全法第九十一条，酒后开车会被暂扣驾驶证半年。The driver must stop. 2024"
CONV = [{"role": "user", "content": "闯红灯扣几分？"}, {"role": "assistant", "content": "记6分。"}]


def _pair(folder, gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    a = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ta = AutoTokenizer.from_pretrained(str(folder))
    tb = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return a, b, ta, tb


def _same_model(folder, gguf, atol=0.0):
    a, b, ta, tb = _pair(folder, gguf)
    ids = ta(TEXT)["input_ids"]
    assert tb(TEXT)["input_ids"] == ids
    assert tb.apply_chat_template(CONV, tokenize=False) == ta.apply_chat_template(CONV, tokenize=False)
    assert (tb.eos_token, tb.pad_token, tb.bos_token) == (ta.eos_token, ta.pad_token, ta.bos_token)
    with torch.no_grad():
        la, lb = a(torch.tensor([ids])).logits, b(torch.tensor([ids])).logits
    assert (la - lb).abs().max().item() <= atol
    return a, b


def test_qwen2_f32_round_trip_is_exact(tiny_model, tiny_gguf):
    check_gguf_header(tiny_gguf)
    a, b = _same_model(tiny_model, tiny_gguf)
    assert b.config.model_type == "qwen2" and b.config.tie_word_embeddings is False
    assert b.config.num_key_value_heads == a.config.num_key_value_heads


def test_llama_round_trip_undoes_the_qk_permutation(tmp_path):
    """llama.cpp permutes q/k rows for llama; transformers reverses it on load. A non-default rope base too."""
    from lorakit.models.tiny import build_tiny
    folder = build_tiny(tmp_path / "llama", arch="llama", seed=1)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = 500000.0
    (folder / "config.json").write_text(json.dumps(cfg))
    out = write_gguf(folder, tmp_path / "llama.gguf")
    _, b = _same_model(folder, out)
    assert b.config.model_type == "llama" and b.config.rope_parameters["rope_theta"] == 500000.0


def test_llama_without_permutation_would_differ(tmp_path, monkeypatch):
    """Guards the test above: skipping the permutation really changes the logits."""
    from lorakit.models import gguf_writer
    from lorakit.models.tiny import build_tiny
    folder = build_tiny(tmp_path / "llama", arch="llama", seed=1)
    monkeypatch.setattr(gguf_writer, "_permute_llama", lambda w, *a: w)
    out = write_gguf(folder, tmp_path / "unpermuted.gguf")
    a, b, ta, _ = _pair(folder, out)
    ids = torch.tensor([ta(TEXT)["input_ids"]])
    with torch.no_grad():
        assert (a(ids).logits - b(ids).logits).abs().max().item() > 1e-4


def test_f16_is_half_the_size_and_close(tiny_model, tmp_path):
    out = write_gguf(tiny_model, tmp_path / "tiny-f16.gguf", dtype="f16")
    f32 = write_gguf(tiny_model, tmp_path / "tiny-f32.gguf")
    assert out.stat().st_size < 0.6 * f32.stat().st_size
    _same_model(tiny_model, out, atol=5e-3)


def test_tied_embeddings_omit_the_output_tensor(tiny_model, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    model.config.tie_word_embeddings = True
    model.tie_weights()
    folder = tmp_path / "tied"
    model.save_pretrained(folder)
    for f in tiny_model.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy2(f, folder / f.name)
    out = write_gguf(folder, tmp_path / "tied.gguf")
    assert "output.weight" not in {t.name for t in GGUFReader(out).tensors}
    _, b = _same_model(folder, out)
    assert b.config.tie_word_embeddings is True


def test_written_metadata(tiny_gguf):
    from gguf import GGUFReader
    r = GGUFReader(tiny_gguf)

    def val(key):
        f = r.fields[key]
        return f.contents()

    assert val("general.architecture") == "qwen2"
    assert val("qwen2.block_count") == 2 and val("qwen2.attention.head_count_kv") == 2
    assert val("tokenizer.ggml.model") == "gpt2" and val("tokenizer.ggml.pre") == "qwen2"  # AutoTokenizer gives Qwen2Tokenizer its own split
    assert "<|im_start|>" in val("tokenizer.chat_template")
    tokens = val("tokenizer.ggml.tokens")
    assert tokens[val("tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output.weight", "blk.0.attn_q.weight", "blk.0.attn_q.bias", "output_norm.weight"} <= names
    assert {t.tensor_type.name for t in r.tensors} == {"F32"}


def test_unsupported_inputs_are_lorakit_errors(tiny_model, tmp_path):
    with pytest.raises(LorakitError, match="config.json"):
        write_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(LorakitError, match="unknown GGUF type .q4."):
        write_gguf(tiny_model, tmp_path / "x.gguf", dtype="q4")
    other = tmp_path / "gpt2"
    shutil.copytree(tiny_model, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(LorakitError, match="architecture 'gpt2'"):
        write_gguf(other, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".x.gguf*"))


def test_failure_mid_write_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    import gguf
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    out = tmp_path / "tiny.gguf"
    with pytest.raises(OSError):
        write_gguf(tiny_model, out)
    assert list(tmp_path.iterdir()) == []
