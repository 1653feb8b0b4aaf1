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


def generate(model, tokenizer, conversations: Sequence[list[dict]], *, max_new_tokens: int = 128,
             batch_size: int = 8, precision=None, on_batch: Callable[[int], None] | None = None,
             starts: Sequence[Sequence[str] | None] | None = None, temperature: float = 0.0,
             stopped: list[bool] | None = None) -> list[str]:
    """Greedy answers (or sampled, with ``temperature`` > 0) for each message list (left-padded batches, stop at
    the end-of-turn token). ``starts``: per conversation, the strings its answer must begin with one of
    (`AllowedStarts`), or None. ``stopped``, when given, receives for each conversation whether its answer ended
    on a stop token (else it ran out of ``max_new_tokens``)."""
    import torch
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    stops = stop_ids(tokenizer)
    device = next(model.parameters()).device
    # Longest prompts first so that a batch holds prompts of similar length (less padding).
    texts = [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in conversations]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[str] = [""] * len(texts)
    ended = [False] * len(texts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
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


def answer_loss(model, tokenizer, conversations: Sequence[list[dict]], *, max_length: int = 1024,
                precision=None, batch_size: int = 8) -> tuple[float, list[float]]:
    """Mean loss per trained token on the reference answers (same mask as training) and per-example losses."""
    import torch
    import torch.nn.functional as F

    from lorakit.data.tokenize import assistant_spans
    device = next(model.parameters()).device
    rows = [assistant_spans(tokenizer, m, max_length=max_length) for m in conversations]
    total, count, per = 0.0, 0, []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk], device=device)
        att = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
        lab = torch.tensor([[t if k else -100 for t, k in zip(i, m)] + [-100] * (width - len(i)) for i, m in chunk],
                           device=device)
        # Logits only where the next token is trained (as training does): the full (batch × length × 152k
        # vocabulary) fp32 logits of long prompts with passages would take gigabytes.
        target = lab[:, 1:]
        keep = (target != -100).any(dim=0).nonzero().squeeze(-1)
        if keep.numel() == 0:
            keep = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad(), autocast_ctx(model, precision):
            logits = model(input_ids=ids, attention_mask=att, logits_to_keep=keep).logits
        target = target[:, keep]
        lp = torch.stack([F.cross_entropy(logits[b].float(), target[b], ignore_index=-100, reduction="none")
                          for b in range(logits.size(0))])
        del logits
        n = (target != -100).sum(1)
        for s, c in zip(lp.sum(1).tolist(), n.tolist()):
            per.append(s / c if c else float("nan"))
        total += lp.sum().item()
        count += int(n.sum())
    return (total / count if count else float("nan")), per


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss == loss and loss < 50 else float("inf")
