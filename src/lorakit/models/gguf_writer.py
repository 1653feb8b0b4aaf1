"""GGUF out: write a Hugging Face causal-LM folder (Qwen2 or Llama architecture) as a GGUF file: F32, F16, or
quantised with the `gguf` package's own quantisers (Q8_0, Q5_0, Q4_0: the block formats llama.cpp reads).

The `gguf` package has no HF→GGUF converter (that lives in llama.cpp), so this is a small one built on
`gguf.GGUFWriter`, following llama.cpp's `convert_hf_to_gguf.py` conventions:

* tensor names come from gguf's own tables (``gguf.get_tensor_name_map``);
* for the llama architecture, q/k projection rows are permuted the way llama.cpp expects (its rope pairs
  neighbouring dimensions); transformers undoes that permutation when it loads a llama GGUF. Qwen2 is written
  as is: llama.cpp uses NEOX-style rope for it and transformers applies no permutation on load;
* hyper-parameters under the ``{arch}.*`` keys, the byte-level BPE tokenizer (tokens, types, merges,
  bos/eos/pad ids, pre-tokenizer name), the chat template and the end-of-turn id (``tokenizer.ggml.eot_token_id``:
  what llama.cpp and Ollama stop on, the usual cause of a GGUF that "never stops") under ``tokenizer.*``;
* quantised files keep 1-D tensors (norms, biases) in F32 and, for the 4/5-bit types, the output head in Q8_0
  (llama.cpp's own quantiser also keeps that tensor at a higher precision); a row length that is no multiple of
  the block size falls back to F16, as llama.cpp does.

`transformers` loads the result back (``from_pretrained(dir, gguf_file=...)``) with identical logits for F32.
Tensors are streamed from the safetensors files one at a time, so memory stays near one tensor's size.
"""
from __future__ import annotations

import json
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.io import atomic_path

SUPPORTED = {"qwen2": "QWEN2", "llama": "LLAMA"}  # HF model_type → gguf.MODEL_ARCH member
DTYPES = ("f32", "f16", "q8_0", "q5_0", "q4_0")
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q5_0": "MOSTLY_Q5_0",
              "q4_0": "MOSTLY_Q4_0"}  # gguf.LlamaFileType members


def tensor_type(dtype: str, name: str, shape: tuple[int, ...]):
    """The GGML type one tensor is stored in for a file of ``dtype`` (see the module docstring for the rules)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
    if len(shape) < 2 or dtype == "f32":
        return T.F32
    if dtype == "f16":
        return T.F16
    qtype = T[dtype.upper()]
    if dtype != "q8_0" and name == "output.weight":
        qtype = T.Q8_0
    return qtype if shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0 else T.F16


def tensor_type_counts(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds (what a quantiser really chose, fallbacks included)."""
    from collections import Counter

    import gguf
    return dict(Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors).most_common())


def tensor_bytes(qtype, shape: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


def _permute_llama(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's q/k row permutation for the llama architecture (inverse of transformers' reverse_permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    kind = params.get("rope_type") or params.get("type") or scaling.get("rope_type") or scaling.get("type")
    if kind not in (None, "default"):
        raise LorakitError(f"rope scaling '{kind}' cannot be written to GGUF by lorakit (only plain rope)",
                           field="rope_parameters", hint="Export a model with default rope, or use llama.cpp's "
                                                         "convert_hf_to_gguf.py for this one")
    return float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)


def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for the pre-tokenizer (which regex splits text before BPE); transformers reads it back."""
    if not pre:
        raise LorakitError("the tokenizer has no pre-tokenizer, so it is not a byte-level BPE tokenizer")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        if pre.get("add_prefix_space"):
            raise LorakitError("byte-level tokenizers that add a prefix space cannot be written to GGUF by lorakit")
        return "gpt-2"  # GPT-2's own split, the byte-level default on both sides
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        if len(parts) == 2 and len(splits) == 1 and parts[1].get("type") == "ByteLevel":
            regex = (splits[0].get("pattern") or {}).get("Regex")
            try:
                from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
            except ImportError:  # pragma: no cover - pinned transformers has it
                GGUF_PRE_TOKENIZER_SPLITS = {}
            preferred = ("qwen2", "llama-bpe", "qwen35", "gpt-4o", "tekken")
            names = [n for n in preferred if GGUF_PRE_TOKENIZER_SPLITS.get(n) == regex]
            names += [n for n, r in GGUF_PRE_TOKENIZER_SPLITS.items() if r == regex and n not in names]
            if names:
                return names[0]
    raise LorakitError(f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) has no GGUF name lorakit knows",
                       hint="Only byte-level BPE tokenizers with a GPT-2, Qwen2 or Llama-3 split can be exported")


def _tokenizer_fields(model_dir: Path, vocab_size: int) -> dict:
    """Everything the ``tokenizer.*`` keys need, read through transformers (it knows every file layout)."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    from lorakit.models.chat import end_of_turn_id

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise LorakitError(f"cannot load the tokenizer of this folder ({str(e)[:200]})", file=model_dir) from None
    if not getattr(tok, "is_fast", False):
        raise LorakitError("the GGUF writer needs a fast (tokenizer.json) tokenizer", file=model_dir)
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise LorakitError(f"the tokenizer is {model.get('type')}, not byte-level BPE; lorakit writes only the "
                           f"latter to GGUF", file=model_dir)
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))

    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # llama.cpp pads a vocabulary smaller than the embedding the same way
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = tok("a")["input_ids"]
    return {
        "pre": pre, "tokens": tokens, "types": types, "merges": merges,
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id, "unk": tok.unk_token_id,
        "add_bos": bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id,
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
        "eot": end_of_turn_id(tok) if isinstance(tok.chat_template, str) else None,
    }


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise LorakitError("no model.safetensors (or sharded index) in this folder", file=model_dir,
                       hint="Save the model with save_pretrained(safe_serialization=True) first")


def write_gguf(model_dir: Path, out: Path, dtype: str = "f32") -> Path:
    """Write the HF causal LM in ``model_dir`` as a GGUF file at ``out`` (``dtype``: one of DTYPES)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    model_dir, out = Path(model_dir), Path(out)
    if dtype not in DTYPES:
        raise LorakitError(f"unknown GGUF type '{dtype}'", field="gguf", hint="Use " + ", ".join(DTYPES))
    cfg_file = model_dir / "config.json"
    if not cfg_file.exists():
        raise LorakitError("this folder has no config.json, so it is not a Hugging Face model folder", file=model_dir)
    config = json.loads(cfg_file.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise LorakitError(f"architecture '{model_type}' cannot be written to GGUF by lorakit",
                           file=cfg_file, hint="Supported: " + ", ".join(SUPPORTED))
    arch = getattr(gguf.MODEL_ARCH, SUPPORTED[model_type])
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", False))
    rope_theta = _rope_theta(config)
    tokf = _tokenizer_fields(model_dir, vocab_size)
    names = gguf.get_tensor_name_map(arch, n_layers)

    # Plan: (gguf name, file, hf name, shape, GGML type) for every tensor, before any byte is written.
    plan = []
    for f in _weight_files(model_dir):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                if key == "lm_head.weight" and tied:
                    continue  # tied: GGUF omits output.weight and readers reuse token_embd
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise LorakitError(f"tensor '{key}' has no GGUF name for architecture {arch_name}", file=f)
                shape = tuple(st.get_slice(key).get_shape())
                plan.append((name, f, key, shape, tensor_type(dtype, name, shape)))
    if not tied and not any(p[2] == "lm_head.weight" for p in plan):
        raise LorakitError("config says the output head is untied but there is no lm_head.weight", file=model_dir)

    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch_name)
        w.add_name(config.get("_model_name_or_path") or model_dir.name)
        w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))
        w.add_context_length(int(config.get("max_position_embeddings") or 2048))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(rope_theta)
        w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        w.add_vocab_size(len(tokf["tokens"]))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokf["pre"])
        w.add_token_list(tokf["tokens"])
        w.add_token_types(tokf["types"])
        w.add_token_merges(tokf["merges"])
        for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id),
                         ("unk", w.add_unk_token_id)):
            if tokf[key] is not None:
                add(int(tokf[key]))
        w.add_add_bos_token(tokf["add_bos"])
        w.add_add_eos_token(False)
        if tokf["chat_template"]:
            w.add_chat_template(tokf["chat_template"])
        if tokf["eot"] is not None:
            w.add_eot_token_id(int(tokf["eot"]))
        for name, _f, _key, shape, qtype in plan:
            w.add_tensor_info(name, shape, np.dtype(np.float32), tensor_bytes(qtype, shape), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        handles = {}
        try:
            for name, f, key, _shape, qtype in plan:
                if f not in handles:
                    handles[f] = safe_open(str(f), framework="pt")
                t = handles[f].get_tensor(key).float().numpy()
                if model_type == "llama" and ".attn_q." in name:
                    t = _permute_llama(t, n_head, n_head)
                elif model_type == "llama" and ".attn_k." in name:
                    t = _permute_llama(t, n_head, n_kv)
                w.write_tensor_data(np.ascontiguousarray(gguf.quants.quantize(t, qtype)))
        finally:
            handles.clear()
            w.close()
    return out
