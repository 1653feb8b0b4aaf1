"""One place that decides device and precision, and loads tokenizer, model and adapters consistently."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lorakit.errors import LorakitError


@dataclass(frozen=True)
class Precision:
    device: str  # "cuda", "mps" or "cpu"
    weights: str  # dtype the frozen base weights are stored in: "float32" or "bfloat16"
    autocast: str | None  # dtype of matmuls under autocast, or None
    why: str

    @property
    def torch_weights(self):
        import torch
        return getattr(torch, self.weights)

    @property
    def torch_autocast(self):
        import torch
        return getattr(torch, self.autocast) if self.autocast else None


def pick_device() -> str:
    import torch
    forced = os.environ.get("LORAKIT_DEVICE")
    if forced:
        return forced
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@lru_cache(maxsize=None)
def matmul_speed(device: str, dtype_name: str, n: int = 512, reps: int = 8) -> float | None:
    """GFLOP/s of an n×n matmul in ``dtype_name`` on ``device``; None when the dtype does not work there."""
    import torch
    dtype = getattr(torch, dtype_name)
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        (a @ b).sum().item()  # warm-up (and oneDNN kernel selection)
        t0 = time.perf_counter()
        for _ in range(reps):
            c = a @ b
        c.float().sum().item()
        dt = time.perf_counter() - t0
    except (RuntimeError, TypeError):
        return None
    return 2 * n ** 3 * reps / dt / 1e9


def pick_precision(device: str | None = None, requested: str = "auto") -> Precision:
    """CUDA: bf16 weights + bf16 autocast where supported. MPS: fp32 unless bf16 works. CPU: bf16 frozen weights
    with bf16 autocast only where a probe shows bf16 matmuls clearly faster (AMX/AVX512-BF16), else plain fp32."""
    import torch
    device = device or pick_device()
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise LorakitError(f"unknown precision '{requested}'", field="precision", hint="Use auto, fp32, bf16 or fp16")
    if requested == "fp32":
        return Precision(device, "float32", None, "requested fp32")
    if requested == "fp16":
        return Precision(device, "float32", "float16", "requested fp16 autocast")
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(device, "bfloat16", "bfloat16", "CUDA with bf16 support: bf16 weights, bf16 autocast")
        return Precision(device, "float32", "float16", "CUDA without bf16: fp16 autocast")
    if requested == "bf16":
        return Precision(device, "bfloat16", "bfloat16", "requested bf16: bf16 frozen weights, bf16 autocast")
    fp32 = matmul_speed(device, "float32")
    bf16 = matmul_speed(device, "bfloat16")
    if bf16 and fp32 and bf16 > 1.5 * fp32:
        # Frozen weights stored in bf16 are never re-cast by autocast (it caches casts only for trainable leaves):
        # measured 1.5x faster per step than fp32 weights + autocast, and half the memory. LoRA weights stay fp32.
        return Precision(device, "bfloat16", "bfloat16",
                         f"bf16 matmuls run {bf16 / fp32:.1f}× faster than fp32 here: bf16 frozen weights, "
                         "fp32 LoRA weights, bf16 autocast")
    # Two significant digits: without AVX512-BF16 or AMX, bf16 runs at a few percent of fp32 ("0.0×" said nothing).
    ratio = f"{bf16 / fp32:.2g}×" if (bf16 and fp32) else "unsupported"
    return Precision(device, "float32", None, f"bf16 matmuls are not clearly faster here ({ratio}): fp32")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def resolve(model: str, console=None) -> Path:
    """A preset name, a Hugging Face folder or a .gguf file → a folder transformers loads quickly."""
    from lorakit.models import presets
    from lorakit.models.gguf import cached_conversion

    p = Path(model).expanduser()
    if p.suffix == ".gguf" or (p.is_file() and _magic(p) == b"GGUF"):
        if not p.is_file():
            raise LorakitError("the GGUF file does not exist", file=p, field="model")
        return cached_conversion(p, console=console)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise LorakitError("this folder has no config.json, so it is not a Hugging Face model folder", file=p,
                               field="model", hint="Pass a model folder, a .gguf file or a preset name")
        return p
    if model in presets.PRESETS:
        return presets.pull(model, console=console)
    if "/" in model or os.sep in model or p.suffix:
        raise LorakitError("no such model file or folder", file=p, field="model",
                           hint="Pass an existing HF folder, a .gguf file, or a preset (lorakit models list)")
    presets.get(model)  # raises the unknown-preset error with the list of names
    raise AssertionError("unreachable")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    from lorakit.models.chat import ensure_chat_template, ensure_pad_token
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise LorakitError(f"cannot load a tokenizer from this folder ({str(e)[:200]})", file=path) from None
    if len(tok) < 2:  # transformers 5 builds an empty tokenizer for a folder without tokenizer files
        raise LorakitError("this folder has no tokenizer (no tokenizer.json, tokenizer.model or vocab.json)",
                           file=path, hint="Save the tokenizer beside the model with tokenizer.save_pretrained")
    ensure_chat_template(tok)
    ensure_pad_token(tok)
    return tok


def load_model(path: str | Path, precision: Precision, *, adapter: str | Path | None = None, trainable=False):
    """Load the base model in the chosen weight dtype on the chosen device; optionally attach a LoRA adapter."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=precision.torch_weights)
    except (OSError, ValueError) as e:
        raise LorakitError(f"cannot load a causal language model from this folder ({str(e)[:200]})",
                           file=path) from None
    if getattr(model, "hf_quantizer", None) is not None and getattr(model.config, "quantization_config", None) is None:
        model.hf_quantizer = None
    model.to(precision.device)
    contiguous_head_input(model)
    if adapter is not None:
        model = attach_adapter(model, adapter, trainable=trainable)
    if not trainable:
        model.eval()  # callers use torch.no_grad() / inference_mode(); global grad mode is left alone
    return model


def _contiguous_first(module, args):
    x = args[0] if args else None
    if x is not None and hasattr(x, "is_contiguous") and not x.is_contiguous():
        return (x.contiguous(), *args[1:])
    return None


def contiguous_head_input(model) -> None:
    """Give the output layer contiguous hidden states: generate() slices the prompt's last position
    (``hidden[:, -1:, :]``, a strided view), and on the CPU torch's linear on such a 3-D view copies the
    152k-word weight once per row: 32 rows took 49 s and 8 GB against 0.04 s for the same rows made contiguous
    (torch 2.13, bf16, 2 cores), in every batch's first step."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(_contiguous_first)


def attach_adapter(model, adapter: str | Path, *, name: str = "default", trainable: bool = False):
    from peft import PeftModel
    adapter = adapter_dir(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise LorakitError("no adapter_config.json here, so this is not a LoRA adapter (or a run folder with one)",
                           file=adapter, field="adapter")
    return PeftModel.from_pretrained(model, str(adapter), adapter_name=name, is_trainable=trainable)


def set_threads() -> int:
    """Use every physical core for intra-op work (the default can leave cores idle inside containers)."""
    import torch
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, n // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # processes on one host share the cores
    torch.set_num_threads(n)
    return n


def adapter_dir(adapter: str | Path) -> Path:
    """An adapter folder, or the adapter/ inside a run folder."""
    adapter = Path(adapter)
    if (adapter / "adapter").is_dir() and not (adapter / "adapter_config.json").exists():
        return adapter / "adapter"
    return adapter


class AdapterSet:
    """One base model with several named LoRA adapters attached, switched per use: N adapters cost one base."""

    def __init__(self, base, adapters: dict[str, str | Path]):
        self.base = base
        self.peft = None
        self.names: list[str] = []
        for name, adapter in adapters.items():
            if self.peft is None:
                self.peft = attach_adapter(base, adapter, name=name)
            else:
                self.peft.load_adapter(str(adapter_dir(adapter)), adapter_name=name)
            self.names.append(name)

    def use(self, name: str | None):
        """(model, context manager) for adapter ``name``, or for the bare base model when ``name`` is None."""
        import contextlib
        if self.peft is None:
            return self.base, contextlib.nullcontext()
        if name is None:
            return self.peft, self.peft.disable_adapter()
        self.peft.set_adapter(name)
        return self.peft, contextlib.nullcontext()
