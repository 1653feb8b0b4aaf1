"""GGUF in: dequantise once into a safetensors folder (GGUF loading takes 12-45 s, the folder 0.2-2.7 s)."""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from rich.console import Console

from lorakit.errors import LorakitError
from lorakit.io import atomic_path, cache_home

GGUF_MAGIC = b"GGUF"


def check_gguf_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise LorakitError(f"cannot read the GGUF file ({e.strerror})", file=path) from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise LorakitError("this is not a GGUF file (its first bytes are not the GGUF magic)", file=path,
                           hint="Pass a .gguf model file, a Hugging Face model folder or a preset name")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise LorakitError(f"unsupported GGUF version {version} (expected 2 or 3)", file=path)


def convert_gguf(gguf: Path, out: Path, *, chat_template: str | None = None, console: Console | None = None) -> Path:
    """Load ``gguf`` with transformers (dequantised), write model + tokenizer as a safetensors folder to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.models.chat import ensure_chat_template, ensure_pad_token

    gguf = Path(gguf)
    check_gguf_header(gguf)
    console = console or Console(stderr=True)
    with console.status(f"converting {gguf.name} to a safetensors folder (once; later loads are fast)…"):
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except (ValueError, KeyError, RuntimeError, OSError, struct.error) as e:
            raise LorakitError(f"transformers could not load this GGUF ({type(e).__name__}: {str(e)[:200]})",
                               file=gguf, hint="The file may be truncated or of an architecture transformers "
                                               "cannot dequantise") from None
        # transformers attaches a GGUF "quantizer" although weights are dequantised; it blocks saving and training.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        ensure_chat_template(tok, chat_template)
        ensure_pad_token(tok)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return Path(out)


def cached_conversion(gguf: Path, console: Console | None = None) -> Path:
    """The cache folder for a user's .gguf file, keyed by name, size and mtime (hashing 500 MB each time is slow)."""
    gguf = Path(gguf).resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_home() / "converted" / f"{gguf.stem}-{key}"
    if (out / "config.json").exists():
        return out
    with atomic_path(out, is_dir=True) as tmp:
        convert_gguf(gguf, tmp, console=console)
    return out
