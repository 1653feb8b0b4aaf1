"""Merge a LoRA adapter into its base and write what other engines run: a safetensors folder (bf16 by default),
GGUF files (f16 and quantised types) with the chat template and end-of-turn token inside, and an Ollama Modelfile.

lorakit's own writer (``models.gguf_writer``) writes the f16/f32 GGUF from the fp32 merge; the quantised types
are made from that file by llama.cpp's own quantiser when llama-cpp-python is installed (the k-quants need it),
else by the gguf package's block quantisers inside the writer (q8_0, q5_0, q4_0). export.json says which wrote
each file and which tensor types it holds.

A merged model that loses its effect after conversion, or a GGUF that never stops, is the most common complaint
about fine-tuning tools' export; so the export checks itself: the merge must keep the adapter's logits before
anything is written, and then the export parity check (``lorakit.serve.parity``) compares every exported form,
the GGUF as llama.cpp runs it, with the adapter model on the run's eval questions. The result goes to
``export.json``; an exported form that diverges beyond its format's floor or does not stop fails the export.
"""
from __future__ import annotations

import gc
import shutil
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console

from lorakit.errors import LorakitError
from lorakit.io import atomic_path, write_json

DTYPES = ("bf16", "fp32")
# Prompts for the parity check when the run names no eval data (the adapter's own answers are then the tokens).
DEFAULT_PROMPTS = ["酒后驾驶会受到什么处罚？", "闯红灯一次扣几分？", "驾驶证到期了忘记换证怎么办？",
                   "What should a driver do at a pedestrian crossing?"]


def _run_file(adapter: str | Path, name: str) -> Path | None:
    """A file of the run folder, given the run folder or its adapter/ inside it."""
    adapter = Path(adapter)
    return next((f for f in (adapter / name, adapter.parent / name) if f.exists()), None)


def _run_config(adapter: str | Path) -> dict:
    import yaml
    cfg = _run_file(adapter, "config.yaml")
    return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}) if cfg else {}


def base_of(adapter: str | Path) -> str:
    """The base model a run folder was trained on (its config.yaml), else the adapter's own record of it."""
    import json
    adapter = Path(adapter)
    if not adapter.exists():
        raise LorakitError("no such adapter or run folder", file=adapter, field="adapter",
                           hint="Pass a run folder (runs/NAME) or its adapter/ folder")
    if model := _run_config(adapter).get("model"):
        return model
    cfg = adapter / "adapter_config.json"
    if cfg.exists():
        base = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return base
    raise LorakitError("cannot tell which base model this adapter belongs to", file=adapter,
                       hint="Pass --model")


QUANTIZERS = ("auto", "llama.cpp", "gguf")
UNQUANTISED = ("f32", "f16")


def gguf_types(requested: Sequence[str], quantizer: str = "auto") -> list[str]:
    """The GGUF files to write: the unquantised file every quantised one is made from and judged beside (f16, or
    f32 when asked for) first, then the requested types in order. Refuses, before anything is written, a type
    that the chosen quantiser cannot write."""
    from lorakit.models.gguf_writer import DTYPES as WRITER_TYPES
    from lorakit.serve.engines import llamacpp
    known = list(dict.fromkeys(WRITER_TYPES + tuple(llamacpp.QUANT_TYPES)))
    if quantizer not in QUANTIZERS:
        raise LorakitError(f"unknown quantizer '{quantizer}'", field="quantizer", hint="Use " + ", ".join(QUANTIZERS))
    for t in requested:
        if t not in known:
            raise LorakitError(f"unknown GGUF type '{t}'", field="gguf", hint="Use " + ", ".join(known))
        if t in UNQUANTISED:
            continue
        if quantizer_of(t, quantizer) == "gguf" and t not in WRITER_TYPES:
            raise LorakitError(f"GGUF type '{t}' is written only by llama.cpp's quantiser"
                               + (" and llama-cpp-python is not installed" if quantizer == "auto" else ""),
                               field="gguf", hint=llamacpp.INSTALL_HINT if quantizer == "auto" else
                               "Use --quantizer llama.cpp (or auto), or a type of the gguf package: "
                               + ", ".join(t for t in WRITER_TYPES if t not in UNQUANTISED))
        if quantizer == "llama.cpp" and not llamacpp.available():
            raise LorakitError("--quantizer llama.cpp needs llama-cpp-python, which is not installed",
                               field="quantizer", hint=llamacpp.INSTALL_HINT)
    if not requested:
        return []
    source = ["f32"] if "f32" in requested else ["f16"]
    return list(dict.fromkeys(source + list(requested)))


def quantizer_of(t: str, quantizer: str = "auto") -> str:
    """Who writes a quantised type: llama.cpp's quantiser when it is installed (auto) or asked for, else the gguf
    package's block quantisers inside lorakit's writer."""
    from lorakit.serve.engines import llamacpp
    if quantizer == "auto":
        return "llama.cpp" if llamacpp.available() else "gguf"
    return quantizer


def parity_conversations(adapter, data: str | Path | None, n: int) -> tuple[list[list[dict]] | None, str]:
    """(conversations ending with a reference answer, where they come from); None: use DEFAULT_PROMPTS and the
    adapter's own answers."""
    from lorakit.evaluate.compare import load_eval_records
    cfg = _run_config(adapter)
    where = ""
    data = data or cfg.get("eval_data")
    if not data and (data := _evaluated_on(adapter)):
        where = " (the held-out set the run was evaluated on)"
    if not data or not Path(data).exists():
        return None, "the adapter's own greedy answers to lorakit's default prompts (the run names no eval data)"
    records = load_eval_records(data, limit=n, system_prompt=cfg.get("system_prompt"))
    return [r.prompt_messages() + [{"role": "assistant", "content": r.answer}] for r in records], \
        f"the first {len(records)} eval questions and reference answers of {data}{where}"


def _evaluated_on(adapter: str | Path) -> str | None:
    """The test set of the run's own evaluation (``eval/eval.json``, which ``quickstart`` and ``eval --out RUN/eval``
    write): a quickstart run trains without eval data but is evaluated on the held-out demo questions."""
    import json
    report = _run_file(adapter, "eval/eval.json")
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("meta", {}).get("data") if report else None
    except (ValueError, AttributeError):
        return None


def merge_and_export(model: str, adapter: str | Path, out: str | Path, *, dtype: str = "bf16",
                     gguf: Sequence[str] = (), quantizer: str = "auto", parity: bool = True,
                     data: str | Path | None = None, n: int = 64, answers: int = 16, max_new_tokens: int = 160,
                     console: Console | None = None) -> dict:
    import torch

    from lorakit.models import load_model, load_tokenizer, resolve
    from lorakit.models.chat import stop_ids
    from lorakit.models.gguf_writer import tensor_type_counts, write_gguf
    from lorakit.models.load import Precision, attach_adapter
    from lorakit.serve.engines import llamacpp
    from lorakit.serve.modelfile import write_modelfile
    console = console or Console(stderr=True)
    out = Path(out)
    if dtype not in DTYPES:
        raise LorakitError(f"unknown dtype '{dtype}' for the merged safetensors", field="dtype",
                           hint="Use " + " or ".join(DTYPES))
    types = gguf_types(gguf, quantizer)
    if out.exists() and any(out.iterdir()):
        raise LorakitError("the output folder exists and is not empty", file=out, hint="Choose a new --out folder")
    t0 = time.perf_counter()
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
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids(tokenizer)]
    info: dict = {"base": str(base_path), "adapter": str(adapter), "merged": str(out), "dtype": dtype,
                  "max_logit_diff": diff, "files": {}, "gguf": {}, "gguf_written_by": {}, "gguf_tensor_types": {}}
    with atomic_path(out, is_dir=True) as tmp:
        if types:
            # GGUFs are written from the fp32 merge (not the bf16 copy), so f16 keeps f16's precision.
            full = tmp / ".fp32"
            merged.save_pretrained(full)
            tokenizer.save_pretrained(full)
            from importlib.metadata import version
            for t in types:  # the unquantised source comes first: llama.cpp quantises from it
                path = tmp / f"{out.name}.{t}.gguf"
                with console.status(f"writing GGUF {t}…"):
                    if t not in UNQUANTISED and quantizer_of(t, quantizer) == "llama.cpp":
                        by = llamacpp.quantize(tmp / f"{out.name}.{types[0]}.gguf", path, t)
                    else:
                        write_gguf(full, path, dtype=t)
                        by = "lorakit's GGUF writer (gguf.GGUFWriter) from the fp32 merge" + (
                            "" if t in UNQUANTISED else f", gguf {version('gguf')}'s block quantisers")
                info["gguf"][t] = str(out / path.name)
                info["gguf_written_by"][t] = by
                info["gguf_tensor_types"][t] = tensor_type_counts(path)
            shutil.rmtree(full)
            info["modelfile"] = write_modelfile(tmp, f"{out.name}.{gguf[0]}.gguf", tokenizer, stops,
                                                system=_run_config(adapter).get("system_prompt"), shown_as=out.name)
            info["modelfile"]["path"] = str(out / "Modelfile")
        if dtype == "bf16":
            merged = merged.to(torch.bfloat16)
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info["files"] = {p.name: round(p.stat().st_size / 2 ** 20, 1) for p in sorted(tmp.iterdir()) if p.is_file()}
    del merged, peft_model
    gc.collect()
    info["seconds"] = {"merge_and_write": round(time.perf_counter() - t0, 1)}
    if parity:
        t1 = time.perf_counter()
        info["parity"] = check_parity(base_path, adapter, out, info, data=data, n=n, answers=answers,
                                     max_new_tokens=max_new_tokens,
                                      console=console)
        info["seconds"]["parity"] = round(time.perf_counter() - t1, 1)
    info["ok"] = all(not r["failures"] for r in info.get("parity", {}).get("rows", []))
    write_json(out / "export.json", info)
    return info


def check_parity(base_path: Path, adapter, out: Path, info: dict, *, data, n: int, max_new_tokens: int,
                 console: Console, answers: int | None = None) -> dict:
    """The adapter model against the merged folder and every GGUF (see lorakit.serve.parity): teacher-forced on
    the first `n` eval answers, greedy answers to the first `answers` of them (all when None)."""
    from lorakit.models import load_model, load_tokenizer
    from lorakit.models.load import Precision, pick_device, set_threads
    from lorakit.serve import parity as P
    from lorakit.serve.engines import llamacpp
    set_threads()
    device = pick_device()
    tokenizer = load_tokenizer(base_path)
    convs, source = parity_conversations(adapter, data, n)
    with console.status("parity: the adapter model's logits and answers (the reference)…"):
        ref_engine = P.Transformers(load_model(base_path, Precision(device, "float32", None, "reference"),
                                               adapter=adapter), tokenizer)
        if convs is None:
            prompts = [[{"role": "user", "content": q}] for q in DEFAULT_PROMPTS]
            own, _ = ref_engine.answers(prompts, max_new_tokens)
            convs = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, own)]
        probes = P.probes_for(tokenizer, convs)
        if not probes:
            raise LorakitError("no parity prompt has an answer token to compare", file=data or adapter)
        ref = P.reference(ref_engine, probes, max_new_tokens=max_new_tokens, n_answers=answers)
        del ref_engine
        gc.collect()
    rows = [P.reference_row(ref)]
    merged_mb = sum(v for k, v in info["files"].items() if k.endswith(".safetensors"))
    with console.status("parity: the merged model as saved…"):
        weights = "bfloat16" if info["dtype"] == "bf16" else "float32"
        engine = P.Transformers(load_model(out, Precision(device, weights, None, "as saved")), tokenizer)
        rows.append(P.compare(ref, engine, name=f"merged ({info['dtype']})", engine_name="transformers",
                              fmt=info["dtype"], size_mb=merged_mb, max_new_tokens=max_new_tokens))
        del engine
        gc.collect()
    use_llamacpp = llamacpp.available()
    n_ctx = max(len(p.ids) for p in probes) + max_new_tokens + 64
    for t, path in info["gguf"].items():
        with console.status(f"parity: GGUF {t} in {'llama.cpp' if use_llamacpp else 'transformers'}…"):
            size = Path(path).stat().st_size / 2 ** 20
            if use_llamacpp:
                engine, name = llamacpp.LlamaCpp(path, n_ctx=n_ctx, logits=True), "llama.cpp"
            else:
                from transformers import AutoModelForCausalLM
                from lorakit.models.load import contiguous_head_input
                m = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
                contiguous_head_input(m)  # not loaded through load_model: its answers() generate too
                engine = P.Transformers(m.eval(), tokenizer)
                name = "transformers*"  # the caption and export.json's "llamacpp": false say why
            rows.append(P.compare(ref, engine, name=f"gguf {t}", engine_name=name, fmt=t, size_mb=size,
                                  max_new_tokens=max_new_tokens))
            del engine
            gc.collect()
    result = P.as_dict(rows, ref)
    result["source"] = source
    result["llamacpp"] = use_llamacpp
    return result


def failures(info: dict) -> list[str]:
    """One line per exported form that failed the parity check."""
    return [f"{r['name']}: " + "; ".join(r["failures"]) for r in info.get("parity", {}).get("rows", [])
            if r["failures"]]
