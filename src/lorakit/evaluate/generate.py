"""Batched greedy generation and teacher-forced loss: the two measurements every comparison needs."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

from lorakit.models.chat import stop_ids


def autocast_ctx(model, precision):
    import torch
    if precision is not None and precision.autocast:
        return torch.autocast(device_type=precision.device, dtype=precision.torch_autocast)
    return contextlib.nullcontext()


class AllowedStarts:
    """A logits processor that makes each answer begin with one of its row's allowed strings, then lets it go.

    Constrained decoding (as grammars do in llama.cpp or outlines) over a token trie of the strings: while the
    tokens generated so far are a proper prefix of some allowed start, only the tokens that continue one are
    allowed; the model still picks among them by its own logits, so which start it takes is its choice. A row
    whose starts are None is left alone. Used by grounded answers: their citation must be one of the passages
    shown (`lorakit.rag.answer.answer_starts`).
    """

    def __init__(self, tokenizer, starts: Sequence[Sequence[str] | None], prompt_len: int):
        self.prompt_len = prompt_len
        self.tries: list[tuple[dict, set] | None] = []
        for row in starts:
            if not row:
                self.tries.append(None)
                continue
            nxt: dict[tuple, set] = {}
            ends: set[tuple] = set()
            for text in row:
                ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
                for i in range(len(ids)):
                    nxt.setdefault(ids[:i], set()).add(ids[i])
                ends.add(ids)
            self.tries.append((nxt, ends))

    def __call__(self, input_ids, scores):
        import torch
        for row, trie in enumerate(self.tries):
            if trie is None:
                continue
            done = tuple(input_ids[row, self.prompt_len:].tolist())
            nxt, ends = trie
            allowed = None if done in ends else nxt.get(done)
            if allowed:
                keep = torch.tensor(sorted(allowed), device=scores.device)
                masked = torch.full_like(scores[row], float("-inf"))
                masked[keep] = scores[row, keep]
                scores[row] = masked
        return scores


def start_processors(tokenizer, starts, prompt_len: int):
    """generate() keyword arguments for ``starts`` (one list of allowed starts per row, or None)."""
    if not starts or not any(starts):
        return {}
    from transformers import LogitsProcessorList
    return {"logits_processor": LogitsProcessorList([AllowedStarts(tokenizer, starts, prompt_len)])}


# Padded tokens per batch, at most (rows x longest row). Measured on 2 AMX Xeon cores, 0.5B model, bf16, 96
# new tokens: 32 short questions (~40 tokens) take 37 s in rows of 8 and 16 s in one batch of 32 (decoding reads
# the weights once per step whatever the rows), while 32 prompts with three passages (~400-1,100 tokens) take
# 118 s in rows of 8, 89 s in rows of 16 and 115 s in one batch of 32 (padding to the longest wastes prefill).
BATCH_TOKENS = 16384
# The teacher-forced loss has no decoding to share, only padding to waste: narrower batches (45 prompts with
# passages: 48 s at 4,096 tokens against 63-66 s at 2,048, 8,192 or 8 rows unsorted, same Xeon, noisy host).
LOSS_TOKENS = 4096
# Rows per batch in evaluation when the token budgets allow (eval, rag eval, the general probe).
EVAL_BATCH = 32


def token_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int | None = BATCH_TOKENS) -> list[list[int]]:
    """Indices in batches, longest first: at most ``batch_size`` rows and, when ``batch_tokens`` is set, at most
    that many padded tokens (rows × the batch's longest), so short prompts share a wide batch and long ones a
    narrow one; a row longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        cur = out[-1] if out else None
        # longest first: the batch's first row is its widest
        if cur is not None and len(cur) < batch_size and \
                (not batch_tokens or (len(cur) + 1) * lengths[cur[0]] <= batch_tokens):
            cur.append(i)
        else:
            out.append([i])
    return out


def generate(model, tokenizer, conversations: Sequence[list[dict]], *, max_new_tokens: int = 128,
             batch_size: int = 8, precision=None, on_batch: Callable[[int], None] | None = None,
             starts: Sequence[Sequence[str] | None] | None = None, temperature: float = 0.0,
             stopped: list[bool] | None = None, batch_tokens: int | None = BATCH_TOKENS) -> list[str]:
    """Greedy answers (or sampled, with ``temperature`` > 0) for each message list (left-padded batches, stop at
    the end-of-turn token). Batches: at most ``batch_size`` rows and ``batch_tokens`` padded prompt tokens
    (`token_batches`). ``starts``: per conversation, the strings its answer must begin with one of
    (`AllowedStarts`), or None. ``stopped``, when given, receives for each conversation whether its answer ended
    on a stop token (else it ran out of ``max_new_tokens``)."""
    import torch
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stops = stop_ids(tokenizer)
    device = next(model.parameters()).device
    texts = [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in conversations]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    out: list[str] = [""] * len(texts)
    ended = [False] * len(texts)
    try:
        for idx in token_batches(lengths, batch_size, batch_tokens):
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            width = enc["input_ids"].shape[1]
            extra = start_processors(tokenizer, [starts[i] for i in idx] if starts else None, width)
            with torch.no_grad(), autocast_ctx(model, precision):
                sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} \
                    if temperature > 0 else {"do_sample": False}
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stops,
                                     pad_token_id=tokenizer.pad_token_id, **extra, **sampling)
            for row, i in zip(gen[:, width:], idx):
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
                ended[i] = any(t in stops for t in row.tolist())
            if on_batch:
                on_batch(len(idx))
    finally:
        tokenizer.padding_side = old_side
    if stopped is not None:
        stopped[:] = ended
    return out


def decoder_and_head(model):
    """(decoder, output layer) of a causal LM when it separates them (hidden states first, the 152k-word head
    applied only where needed); (None, None) otherwise. PEFT models give the decoder with the adapters in it."""
    get_decoder = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder is not None else None
    if decoder is None or head is None or getattr(head, "weight", None) is None:
        return None, None
    return decoder, head


def head_logits(model, head, h):
    """fp32 logits of the 2-D hidden states ``h`` (positions × width), on the scale the model generates with
    (Gemma squashes its logits by ``final_logit_softcapping``). Kept 2-D on purpose: the head on a batch × 1 ×
    width slice (``logits_to_keep=1`` under PEFT) made torch's matmul copy the 152k-word weight once per row."""
    import torch
    logits = head(h).float()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def trained_token_losses(model, ids, att, target, precision=None, *, rows_per_chunk: int = 512, **model_kwargs):
    """Cross-entropy (batch × length, 0 where ``target`` is -100) of the next token at the trained positions
    (``model_kwargs``, e.g. a key/value ``cache`` and ``position_ids``, go to the model as they are).

    The head is applied to the trained positions of each row only, ``rows_per_chunk`` positions at a time (fp32
    cross-entropy of bf16/fp32 logits, as training computes it), so memory stays near one chunk of 152k-word
    logits (≈ 0.3 GB) whatever the batch: asking for the union of the batch's trained positions
    (``logits_to_keep``) kept every position of a batch of long prompts with passages whose answers start at
    different offsets — 8 rows × 2,000 positions × 152k words, the 6.5 GB peak of a `rag eval`.
    """
    import torch
    import torch.nn.functional as F

    out = torch.zeros(target.shape, dtype=torch.float32, device=target.device)
    sel = target != -100
    if not bool(sel.any()):
        return out
    decoder, head = decoder_and_head(model)
    with torch.no_grad(), autocast_ctx(model, precision):
        if decoder is None:  # no separable head: whole logits, as the model gives them
            logits = model(input_ids=ids, attention_mask=att, **model_kwargs).logits[:, :-1]
            out[sel] = F.cross_entropy(logits[sel].float(), target[sel], reduction="none")
            return out
        h = decoder(input_ids=ids, attention_mask=att, use_cache=False, **model_kwargs).last_hidden_state[:, :-1]
        hs, ts = h[sel], target[sel]
        parts = []
        for c in range(0, hs.size(0), rows_per_chunk):
            logits = head_logits(model, head, hs[c:c + rows_per_chunk])
            parts.append(F.cross_entropy(logits, ts[c:c + rows_per_chunk], reduction="none"))
        out[sel] = torch.cat(parts)
    return out


def answer_loss(model, tokenizer, conversations: Sequence[list[dict]], *, max_length: int = 1024,
                precision=None, batch_size: int = 8,
                batch_tokens: int | None = LOSS_TOKENS) -> tuple[float, list[float]]:
    """Mean loss per trained token on the reference answers (same mask as training) and per-example losses
    (length-sorted batches of at most ``batch_size`` rows and ``batch_tokens`` padded tokens: `token_batches`)."""
    import torch

    from lorakit.data.tokenize import assistant_spans
    device = next(model.parameters()).device
    rows = [assistant_spans(tokenizer, m, max_length=max_length) for m in conversations]
    total, count = 0.0, 0
    per = [float("nan")] * len(rows)
    for idx in token_batches([len(ids) for ids, _ in rows], batch_size, batch_tokens):
        chunk = [rows[i] for i in idx]
        width = max(len(ids) for ids, _ in chunk)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk], device=device)
        att = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
        lab = torch.tensor([[t if k else -100 for t, k in zip(i, m)] + [-100] * (width - len(i)) for i, m in chunk],
                           device=device)
        target = lab[:, 1:]
        lp = trained_token_losses(model, ids, att, target, precision)
        n = (target != -100).sum(1)
        for i, s, c in zip(idx, lp.sum(1).tolist(), n.tolist()):
            per[i] = s / c if c else float("nan")
        total += lp.sum().item()
        count += int(n.sum())
    return (total / count if count else float("nan")), per


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss == loss and loss < 50 else float("inf")
