"""Write a randomly initialised Qwen2 model with a real model's shape (0.5B or 7B) plus the tiny test tokenizer.

For GPU speed and scaling measurements where only the shape matters (no weights can be fetched there).

    python benchmarks/shape_model.py 0.5b OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),  # smoke runs of the scripts
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def build(shape: str, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from lorakit.models.tiny import build_tokenizer
    tok = build_tokenizer()
    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1], Path(sys.argv[2])))
