"""Export parity: does the exported model answer like the adapter it came from, in the engine that will run it?

The adapter model (base + LoRA, fp32, transformers) is the reference. Each exported form — the merged
safetensors as saved, every GGUF as llama.cpp runs it — is compared with it on the same fixed prompts, two ways:

* teacher-forced: the same token sequences (prompt + reference answer) go through both; at every answer position
  the top-1 next token must agree, and the distance between the two next-token distributions is measured
  (mean KL in nats, largest absolute logit difference);
* free-running: greedy answers (identical or not, and the character where they part), and whether each stops at
  end-of-turn. For a GGUF the answer is produced by llama.cpp from the chat template and tokenizer stored in the
  file, exactly as llama.cpp, LM Studio or Ollama would prompt it; its tokenization is also checked against the
  tokenizer's own on every prompt. Forcing is cheap and is what the floors judge, so it runs on every prompt
  (the run's whole eval set by default: on 16 answers, about 600 tokens, one point of agreement is six tokens, and
  Q8_0 files of one adapter measured 96.5-97.2 % there but 97.2-98.1 % over 45); greedy answers, which cost a
  whole generation each, run on the first few.

An exported form fails when its top-1 agreement falls below the floor expected of its number format (``FLOORS``,
set before any measurement, not tuned to one), or when it does not stop where the adapter stops: the two failures
users meet as "garbage after conversion" and "never stops".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from rich.table import Table

# Lowest top-1 next-token agreement with the adapter model expected of each format (teacher-forced).
# The k-quant floors sit between the block types of about the same bits (q6_k ~6.6 bits/weight, q5_k_m ~5.7,
# q4_k_m ~4.9), set from the formats before any k-quant file was measured here.
FLOORS = {"fp32": 0.999, "f32": 0.999, "bf16": 0.97, "f16": 0.99, "q8_0": 0.97, "q6_k": 0.95, "q5_k_m": 0.92,
          "q5_0": 0.90, "q4_k_m": 0.85, "q4_0": 0.80}


@dataclass
class Probe:
    messages: list[dict]  # prompt messages (ending with the user turn)
    ids: list[int] = field(default_factory=list)  # prompt + answer under the chat template
    positions: list[int] = field(default_factory=list)  # positions whose next token is an answer token
    prompt_text: str = ""  # the prompt under the chat template, as the tokenizer renders it
    prompt_ids: list[int] = field(default_factory=list)  # and as the tokenizer splits it


@dataclass
class Reference:
    probes: list[Probe]
    logits: list  # per probe: float16 tensor [len(positions), vocab] of the adapter model
    answers: list[str]  # greedy answers to the first `n_answers` probes (free-running costs far more than forcing)
    stopped: list[bool]


@dataclass
class Row:
    name: str  # "adapter", "merged (bf16)", "gguf f16", …
    engine: str
    fmt: str  # number format: fp32, bf16, f16, q8_0, …
    size_mb: float | None
    top1: float
    kl: float
    max_logit_diff: float
    identical: int
    parted_at: list[int | None]  # per probe: first character where the answer differs from the adapter's
    stopped: int
    n: int  # prompts compared teacher-forced (and tokenized)
    tokenizer_match: int | None = None  # prompts llama.cpp tokenized exactly as the tokenizer does
    floor: float | None = None
    failures: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    n_answers: int | None = None  # prompts answered greedily (the first ones); None: all n

    @property
    def answered(self) -> int:
        return self.n if self.n_answers is None else self.n_answers

    @property
    def ok(self) -> bool:
        return not self.failures


def probes_for(tokenizer, conversations: list[list[dict]], *, max_length: int = 512) -> list[Probe]:
    """Token sequences and answer positions for conversations that end with an assistant answer."""
    from lorakit.data.tokenize import assistant_spans
    out = []
    for conv in conversations:
        ids, mask = assistant_spans(tokenizer, conv, max_length=max_length, last_turn_only=True)
        positions = [i for i in range(len(ids) - 1) if mask[i + 1]]
        if positions:
            text = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
            out.append(Probe(messages=list(conv[:-1]), ids=ids, positions=positions, prompt_text=text,
                             prompt_ids=tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


class Transformers:
    """A transformers model (the adapter model or the merged one) behind the two calls the comparison makes."""

    def __init__(self, model, tokenizer, precision=None, batch_size: int = 8):
        self.model, self.tokenizer, self.precision, self.batch_size = model, tokenizer, precision, batch_size

    def logits(self, ids: list[int], positions: list[int]):
        import torch

        from lorakit.evaluate.generate import autocast_ctx
        device = next(self.model.parameters()).device
        with torch.no_grad(), autocast_ctx(self.model, self.precision):
            out = self.model(input_ids=torch.tensor([ids], device=device),
                             logits_to_keep=torch.tensor(positions, device=device)).logits[0]
        return out.float().cpu()

    def answers(self, prompts: list[list[dict]], max_new_tokens: int) -> tuple[list[str], list[bool]]:
        from lorakit.evaluate.generate import generate
        if not prompts:
            return [], []
        stopped: list[bool] = []
        texts = generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens,
                         batch_size=self.batch_size, precision=self.precision, stopped=stopped)
        return texts, stopped


def reference(engine: Transformers, probes: list[Probe], *, max_new_tokens: int,
              n_answers: int | None = None) -> Reference:
    """The adapter's logits on every probe and its greedy answers to the first `n_answers` (all when None)."""
    import torch
    logits = [engine.logits(p.ids, p.positions).to(torch.float16) for p in probes]
    answers, stopped = engine.answers([p.messages for p in probes[:n_answers]], max_new_tokens)
    return Reference(probes, logits, answers, stopped)


def parted_at(a: str, b: str) -> int | None:
    """The first character index where two answers differ (None when identical)."""
    if a == b:
        return None
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def compare(ref: Reference, engine, *, name: str, engine_name: str, fmt: str, size_mb: float | None,
            max_new_tokens: int) -> Row:
    """One exported form against the reference: teacher-forced agreement, greedy answers, stopping."""
    import torch
    import torch.nn.functional as F
    agree = total = 0
    kl_sum, max_diff = 0.0, 0.0
    for probe, want in zip(ref.probes, ref.logits):
        got = torch.as_tensor(engine.logits(probe.ids, probe.positions)).float()
        want = want.float()
        n_vocab = min(got.shape[-1], want.shape[-1])
        got, want = got[:, :n_vocab], want[:, :n_vocab]
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(probe.positions)
        lp, lq = F.log_softmax(want, -1), F.log_softmax(got, -1)
        kl_sum += float((lp.exp() * (lp - lq)).sum(-1).clamp_min(0).sum())  # ≥ 0 but for rounding
        max_diff = max(max_diff, float((got - want).abs().max()))
    answers, stopped = engine.answers([p.messages for p in ref.probes[:len(ref.answers)]], max_new_tokens)
    parts = [parted_at(a, b) for a, b in zip(ref.answers, answers)]
    row = Row(name=name, engine=engine_name, fmt=fmt, size_mb=size_mb, top1=agree / total if total else math.nan,
              kl=kl_sum / total if total else math.nan, max_logit_diff=max_diff,
              identical=sum(p is None for p in parts), parted_at=parts, stopped=sum(stopped), n=len(ref.probes),
              floor=FLOORS.get(fmt), answers=answers, n_answers=len(ref.answers))
    if hasattr(engine, "tokenize"):
        row.tokenizer_match = sum(engine.tokenize(p.prompt_text) == p.prompt_ids for p in ref.probes)
    row.failures = verdict(row, ref, stopped)
    return row


def verdict(row: Row, ref: Reference, stopped: list[bool]) -> list[str]:
    """Why this exported form must not be shipped (empty when it may)."""
    why = []
    if row.floor is not None and row.top1 < row.floor:
        why.append(f"top-1 next-token agreement with the adapter is {row.top1:.1%}, below the {row.floor:.0%} "
                   f"expected of {row.fmt}")
    if any(ref.stopped) and not any(stopped):
        why.append("it never emits end-of-turn: no answer stopped, while the adapter's answers did")
    else:
        past = [i for i, (rs, s, a, b) in enumerate(zip(ref.stopped, stopped, ref.answers, row.answers))
                if rs and not s and b.startswith(a)]
        if past:
            why.append(f"it runs past end-of-turn: on {len(past)} prompt(s) (first: #{past[0] + 1}) it gives the "
                       f"adapter's answer and then keeps generating instead of stopping")
    if row.tokenizer_match is not None and row.tokenizer_match < row.n:
        why.append(f"its tokenizer splits {row.n - row.tokenizer_match} of {row.n} prompts differently from the "
                   f"model's own tokenizer")
    return why


def reference_row(ref: Reference) -> Row:
    k = len(ref.answers)
    return Row(name="adapter (reference)", engine="transformers + peft", fmt="fp32", size_mb=None, top1=1.0, kl=0.0,
               max_logit_diff=0.0, identical=k, parted_at=[None] * k, stopped=sum(ref.stopped), n=len(ref.probes),
               answers=ref.answers, n_answers=k)


def parity_table(rows: list[Row]) -> Table:
    caption = ("top-1: next-token agreement on answer tokens (floor: expected of the format); KL: mean nats; "
               "tok: prompts tokenized identically")
    if any(r.engine == "transformers*" for r in rows):  # only then: the key would read as if llama.cpp were missing
        caption += "; transformers*: the GGUF dequantised by transformers (llama-cpp-python is not installed)"
    t = Table(title="export parity against the adapter model (teacher-forced on the same tokens; greedy answers)",
              caption=caption)
    for col in ("model", "engine", "MB", "top-1", "floor", "KL", "max |Δlogit|", "same answer", "stops", "tok",
                "verdict"):
        t.add_column(col, justify="left" if col in ("model", "engine", "verdict") else "right")
    for r in rows:
        t.add_row(r.name, r.engine, f"{r.size_mb:,.0f}" if r.size_mb else "", f"{r.top1:.1%}",
                  f"{r.floor:.0%}" if r.floor else "", f"{r.kl:.4f}", f"{r.max_logit_diff:.3f}",
                  f"{r.identical}/{r.answered}", f"{r.stopped}/{r.answered}",
                  f"{r.tokenizer_match}/{r.n}" if r.tokenizer_match is not None else "",
                  "[green]ok[/]" if r.ok else "[red]FAIL[/]")
    return t


def as_dict(rows: list[Row], ref: Reference) -> dict:
    return {"prompts": [p.messages for p in ref.probes], "answer_tokens": sum(len(p.positions) for p in ref.probes),
            "answered": len(ref.answers), "adapter_answers": ref.answers, "rows": [asdict(r) for r in rows]}
