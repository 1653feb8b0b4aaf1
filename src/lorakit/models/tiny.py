"""A tiny random Qwen2-style model with a locally trained byte-level BPE tokenizer: smoke runs and tests in seconds."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from lorakit.models.chat import CHATML_TEMPLATE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    """Chinese + English text made by the project: the bundled demo data plus a few English lines."""
    lines = [
        "The driver must stop at a red light and yield to pedestrians at a crossing.",
        "Fine-tuning adapts a small language model to a domain with LoRA adapters.",
        "Speeding, drunk driving and running red lights cost licence points.",
        "user assistant system question answer article law",
    ] * 4
    try:
        demo = resources.files("lorakit") / "demo"
        for name in ("train.jsonl", "eval.jsonl"):
            f = demo / name
            if f.is_file():
                for row in f.read_text(encoding="utf-8").splitlines():
                    if row.strip():
                        for m in json.loads(row).get("messages", []):
                            lines.append(m["content"])
    except (FileNotFoundError, ModuleNotFoundError, json.JSONDecodeError):
        pass
    lines.append("根据道路交通安全法第九十一条，酒后开车的司机会被暂扣驾驶证半年，还要交罚款。")
    return lines


def build_tokenizer(vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny(out: Path, *, seed: int = 0, arch: str = "qwen2", hidden: int = 64) -> Path:
    """Write a tiny random causal LM + tokenizer to ``out`` (~1 MB; builds in about a second)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    cfg = cfg_cls(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
