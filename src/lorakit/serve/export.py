"""Merge a LoRA adapter into its base and write a standalone model: safetensors folder and, optionally, GGUF.

A merged model that loses its effect after conversion is a known failure elsewhere; here the export checks that
the merged model's next-token logits equal the adapter model's on a probe prompt before anything is written.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lorakit.errors import LorakitError
from lorakit.io import atomic_path, write_json


def base_of(adapter: str | Path) -> str:
    """The base model a run folder was trained on (its config.yaml), else the adapter's own record of it."""
    import json

    import yaml
    adapter = Path(adapter)
    run_cfg = adapter / "config.yaml" if (adapter / "config.yaml").exists() else adapter.parent / "config.yaml"
    if run_cfg.exists():
        return yaml.safe_load(run_cfg.read_text(encoding="utf-8"))["model"]
    cfg = adapter / "adapter_config.json"
    if cfg.exists():
        base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return base
    raise LorakitError("cannot tell which base model this adapter belongs to", file=adapter,
                       hint="Pass --model")


def merge_and_export(model: str, adapter: str | Path, out: str | Path, *, gguf: bool = False,
                     gguf_dtype: str = "f16", console: Console | None = None) -> dict:
    import torch

    from lorakit.models import load_model, load_tokenizer, resolve
    from lorakit.models.load import Precision, attach_adapter
    console = console or Console(stderr=True)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LorakitError("the output folder exists and is not empty", file=out, hint="Choose a new --out folder")
    base_path = resolve(model, console=console)
    tokenizer = load_tokenizer(base_path)
    fp32 = Precision("cpu", "float32", None, "export in fp32")  # merge in full precision, then save
    with console.status("merging the adapter into the base weights…"):
        peft_model = attach_adapter(load_model(base_path, fp32), adapter)
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "酒后驾驶会受到什么处罚？"}],
                                              add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            want = peft_model(**probe).logits[0, -1]
            merged = peft_model.merge_and_unload()
            got = merged(**probe).logits[0, -1]
        diff = (want - got).abs().max().item()
        if diff > 1e-3 * max(1.0, want.abs().max().item()):
            raise LorakitError(f"the merged model's logits differ from the adapter model's by {diff:.3g}",
                               file=adapter, hint="The adapter may target modules that cannot be merged")
    with atomic_path(out, is_dir=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    info = {"base": str(base_path), "adapter": str(adapter), "merged": str(out), "max_logit_diff": diff}
    if gguf:
        from lorakit.models.gguf_writer import write_gguf
        with console.status("writing GGUF…"):
            path = write_gguf(out, out / f"{out.name}.{gguf_dtype}.gguf", dtype=gguf_dtype)
        info["gguf"] = str(path)
    write_json(out / "lorakit_export.json", info)
    return info
