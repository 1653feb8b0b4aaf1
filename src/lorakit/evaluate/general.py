"""What fine-tuning cost outside the domain: a general-ability probe shipped with lorakit, base versus each adapter.

Three measurements that know nothing of the domain, all from files lorakit wrote in its own words
(``lorakit/general/``):

1. 210 multiple-choice items in Chinese and English (everyday knowledge, arithmetic, reading comprehension,
   common sense, instruction following), scored by the log-likelihood of each option as the model's answer:
   no generation, so the probe is fast and deterministic. The question is asked alone and each option's text is
   scored as the whole reply, per token (the "cloze" form of lm-evaluation-harness): lettered options with
   "B. …" scored as the reply measured the default 0.5B model's taste for a letter more than its knowledge
   (0.37 of 70 items against 0.54 in this form). The prompt is run once per item and its key/value
   cache is shared by the options; the tokens every prompt begins with are run once per system.
2. The loss on a short general text (the same per-token loss as training, over plain text).
3. A handful of open instructions (an email, a translation, a list) answered greedily, shown side by side.

A domain fine-tune that damages what the model knew shows up here as lost accuracy, a higher general loss,
or answers that drift into the domain.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from lorakit.errors import LorakitError
from lorakit.evaluate.generate import EVAL_BATCH

LETTERS = "ABCDEFGH"
CATEGORIES = ("knowledge", "arithmetic", "reading", "commonsense", "instruction")
LANGS = ("en", "zh")


def general_file(name: str) -> Path:
    return Path(str(resources.files("lorakit") / "general" / name))


# ---------------------------------------------------------------------------------------------- the material
@dataclass(frozen=True)
class Item:
    id: str
    category: str
    lang: str
    question: str
    options: tuple[str, ...]
    answer: int  # index of the one right option

    def messages(self) -> list[dict]:
        """The question alone, as a user turn (the options are the candidate replies, not part of the prompt)."""
        return [{"role": "user", "content": self.question}]

    def replies(self) -> list[str]:
        """Each option's text as the model's whole reply."""
        return list(self.options)


def load_items(path: str | Path | None = None) -> list[Item]:
    """The probe's items; a malformed line names its file, line and field."""
    path = Path(path) if path else general_file("items.jsonl")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = Item(id=row["id"], category=row["category"], lang=row["lang"], question=row["question"],
                        options=tuple(row["options"]), answer=int(row["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise LorakitError(f"not a probe item ({type(e).__name__}: {e})", file=path, line=n,
                               hint="Each line: {id, category, lang, question, options: [...], answer: index}") from None
        if item.lang not in LANGS or not 2 <= len(item.options) <= len(LETTERS) or \
                not 0 <= item.answer < len(item.options):
            raise LorakitError(f"item {item.id}: lang must be en or zh, 2 to {len(LETTERS)} options and answer an "
                               "index among them", file=path, line=n, field="answer")
        items.append(item)
    return items


def load_open(path: str | Path | None = None) -> list[dict]:
    """The open instructions: {id, lang, prompt}."""
    path = Path(path) if path else general_file("open.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_text(path: str | Path | None = None) -> list[str]:
    """The general text, one paragraph per blank-line-separated block."""
    path = Path(path) if path else general_file("text.md")
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


# ---------------------------------------------------------------------------------------------- scoring
def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of the chat template applied to ``messages``, ending with the assistant's generation prompt."""
    from lorakit.data.tokenize import render
    return tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


@dataclass
class SharedPrefix:
    """The key/value cache of the tokens every item's prompt begins with (the default system prompt and the
    user-turn header), computed once per system instead of once per item."""
    ids: list[int]
    cache: object


def shared_prefix(model, prompts: Sequence[list[int]], *, precision=None) -> SharedPrefix | None:
    import torch

    from lorakit.evaluate.generate import autocast_ctx
    n = min(len(p) for p in prompts) - 1  # every item keeps at least one token of its own
    for i in range(max(0, n)):
        if len({p[i] for p in prompts}) > 1:
            n = i
            break
    if n <= 0:
        return None
    device = next(model.parameters()).device
    with torch.no_grad(), autocast_ctx(model, precision):
        out = model(input_ids=torch.tensor([prompts[0][:n]], device=device), use_cache=True, logits_to_keep=1)
    return SharedPrefix(list(prompts[0][:n]), out.cache)


def score_replies(model, tokenizer, prompts: Sequence[list[int]], replies: Sequence[Sequence[str]], *,
                  precision=None, prefix: SharedPrefix | None = None, per_token: bool = False,
                  positions_per_pass: int = 768) -> list[list[float]]:
    """Summed log-probability of each reply as the assistant's answer after its prompt's token ids
    (``replies[i]`` follow ``prompts[i]``; divided by the reply's token count with ``per_token``, so that a long
    option is not penalised for its length).

    Why batched: on a CPU a pass over a few dozen tokens costs about what reading the weights costs, so scoring
    item by item spends its time re-reading them. Here a group of prompts runs as one left-padded pass after the
    shared prefix's cached tokens (explicit position ids, so padding shifts nothing); each prompt's cache is then
    selected once per reply and the group's replies run as right-padded passes of similar lengths (a one-token
    reply needs none). The vocabulary head runs only where a reply token is predicted. Equal, within float error,
    to scoring each full sequence alone (tests check this on a tiny model)."""
    import copy

    import torch

    from lorakit.evaluate.generate import autocast_ctx, decoder_and_head, head_logits, trained_token_losses
    device = next(model.parameters()).device
    decoder, head = decoder_and_head(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    reused = [len(prefix.ids) if (prefix is not None and len(p) > len(prefix.ids) and p[:len(prefix.ids)] == prefix.ids)
              else 0 for p in prompts]
    toks = [[tokenizer(r, add_special_tokens=False)["input_ids"] for r in reps] for reps in replies]
    order = sorted(range(len(prompts)), key=lambda i: (reused[i], len(prompts[i])))  # similar lengths pad little
    scores = [[0.0] * len(reps) for reps in replies]

    def cost(group):  # tokens of the prompt pass, padding included: the size that bounds a group
        return len(group) * max(len(prompts[i]) - reused[i] for i in group)

    at = 0
    while at < len(order):
        group = [order[at]]
        at += 1
        while at < len(order) and reused[order[at]] == reused[group[0]] and cost(group + [order[at]]) <= positions_per_pass:
            group.append(order[at])
            at += 1
        n = reused[group[0]]
        own = [prompts[i][n:] for i in group]
        w1 = max(len(x) for x in own)
        att1 = [[1] * n + [0] * (w1 - len(x)) + [1] * len(x) for x in own]
        cache = None
        if n:
            cache = copy.deepcopy(prefix.cache)
            cache.batch_repeat_interleave(len(group))
        rows = [(g, j, r) for g, i in enumerate(group) for j, r in enumerate(toks[i])]
        inputs = {"input_ids": torch.tensor([[pad] * (w1 - len(x)) + x for x in own], device=device),
                  "attention_mask": torch.tensor(att1, device=device),
                  "position_ids": torch.tensor([[n] * (w1 - len(x)) + list(range(n, n + len(x))) for x in own],
                                               device=device), "cache": cache, "use_cache": True}
        with torch.no_grad(), autocast_ctx(model, precision):
            if decoder is None:
                out = model(**inputs, logits_to_keep=1)
                last = out.logits[:, -1].float()
            else:  # the head on the last positions as a 2-D batch (see head_logits)
                out = decoder(**inputs)
                last = head_logits(model, head, out.last_hidden_state[:, -1])
            first = torch.log_softmax(last, dim=-1)
        for b, (g, j, r) in enumerate(rows):
            scores[group[g]][j] = first[g, r[0]].item()
        # each longer reply after its prompt's cache, in passes of similar reply lengths (2, 3-4, 5-8, …) so that
        # one long option does not pad every row; the head runs only where a reply token is predicted
        buckets: dict[int, list] = {}
        for g, j, r in rows:
            if len(r) > 1:
                buckets.setdefault((len(r) - 1).bit_length(), []).append((g, j, r))
        for part in buckets.values():
            w2 = max(len(r) for _, _, r in part)
            cache = copy.deepcopy(out.cache) if len(buckets) > 1 else out.cache
            cache.batch_select_indices(torch.tensor([g for g, _, _ in part], device=device))
            ids = torch.tensor([r + [pad] * (w2 - len(r)) for _, _, r in part], device=device)
            att = torch.tensor([att1[g] + [1] * len(r) + [0] * (w2 - len(r)) for g, _, r in part], device=device)
            pos = torch.tensor([[n + len(own[g]) + t for t in range(w2)] for g, _, _ in part], device=device)
            target = torch.tensor([r[1:] + [-100] * (w2 - len(r)) for _, _, r in part], device=device)
            rest = -trained_token_losses(model, ids, att, target, precision, cache=cache, position_ids=pos).sum(1)
            for b, (g, j, r) in enumerate(part):
                scores[group[g]][j] += rest[b].item()
        if per_token:
            for g, j, r in rows:
                scores[group[g]][j] /= len(r)
    return scores


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (sensible at small n and near 0 or 1, unlike k/n ± 2σ)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class GeneralSystem:
    name: str
    chosen: list[int]  # option picked per item
    correct: list[bool]
    text_loss: float  # mean loss per token over the general text
    answers: list[str]  # to the open instructions
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(sum(self.correct), len(self.correct))


@dataclass
class GeneralReport:
    items: list[Item]
    open: list[dict]
    systems: list[GeneralSystem] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def base(self) -> GeneralSystem | None:
        return next((s for s in self.systems if s.name == "base"), None)

    def groups(self) -> dict[str, list[int]]:
        """Item indices per category and per language."""
        out: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            out.setdefault(it.category, []).append(i)
        for i, it in enumerate(self.items):
            out.setdefault(it.lang, []).append(i)
        return out

    def row(self, s: GeneralSystem) -> dict:
        """One system's figures, with the shift against the base model when it was measured."""
        lo, hi = s.ci
        d = {"accuracy": s.accuracy, "ci95": [lo, hi], "n": len(s.correct), "text_loss": s.text_loss,
             "seconds": round(s.seconds, 1),
             "by_group": {g: sum(s.correct[i] for i in idx) / len(idx) for g, idx in self.groups().items()}}
        base = self.base
        if base is not None and base is not s:
            d["accuracy_shift"] = s.accuracy - base.accuracy
            d["text_loss_shift"] = s.text_loss - base.text_loss
            d["lost"] = sum(1 for b, a in zip(base.correct, s.correct) if b and not a)
            d["gained"] = sum(1 for b, a in zip(base.correct, s.correct) if a and not b)
        return d

    def table(self, title: str = "general ability (outside the domain)") -> Table:
        t = Table(title=title)
        for col, just in (("system", "left"), ("accuracy [95 % CI]", "right"), ("Δ acc.", "right"),
                          ("right→wrong / wrong→right", "right"), *((g, "right") for g in self.groups()),
                          ("text loss", "right"), ("Δ loss", "right")):
            t.add_column(col, justify=just)
        for s in self.systems:
            r = self.row(s)
            shift = lambda k, fmt: fmt.format(r[k]) if k in r else "–"  # noqa: E731
            t.add_row(s.name, f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
                      shift("accuracy_shift", "{:+.3f}"),
                      f"{r['lost']} / {r['gained']}" if "lost" in r else "–",
                      *(f"{v:.2f}" for v in r["by_group"].values()), f"{s.text_loss:.3f}",
                      shift("text_loss_shift", "{:+.3f}"))
        return t

    def to_dict(self) -> dict:
        return {"meta": self.meta, "systems": {s.name: self.row(s) for s in self.systems}}

    def to_markdown(self) -> str:
        groups = list(self.groups())
        lines = [f"# General ability: {self.meta.get('model')}", "",
                 f"{len(self.items)} multiple-choice items (Chinese and English: {', '.join(CATEGORIES)}), each "
                 "scored by the log-likelihood of every option as the model's answer (chance is 25 %); the loss "
                 f"on a general text of {self.meta.get('text_paragraphs')} paragraphs; {len(self.open)} open "
                 f"instructions answered greedily (at most {self.meta.get('max_new_tokens')} new tokens). "
                 f"{self.meta.get('precision')}.", "",
                 "| system | accuracy | 95 % CI | Δ accuracy | right→wrong / wrong→right | "
                 + " | ".join(groups) + " | text loss | Δ loss |",
                 "|---" * (7 + len(groups)) + "|"]
        for s in self.systems:
            r = self.row(s)
            lines.append(f"| {s.name} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} | "
                         + (f"{r['accuracy_shift']:+.3f} | {r['lost']} / {r['gained']}" if "lost" in r else "– | –")
                         + " | " + " | ".join(f"{r['by_group'][g]:.2f}" for g in groups)
                         + f" | {s.text_loss:.3f} | "
                         + (f"{r['text_loss_shift']:+.3f}" if "text_loss_shift" in r else "–") + " |")
        lines += ["", "## Open instructions, side by side", ""]
        for i, o in enumerate(self.open):
            lines += [f"### {i + 1}. {o['prompt']}", ""]
            for s in self.systems:
                lines.append(f"- **{s.name}**: " + s.answers[i].replace("\n", " ↵ "))
            lines.append("")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the flow
def general_compare(model: str, adapters: Sequence[str | Path], *, out_dir: str | Path | None = None,
                    include_base: bool = True, max_new_tokens: int = 96, batch_size: int = EVAL_BATCH,
                    limit: int | None = None, console: Console | None = None) -> GeneralReport:
    """Base and each adapter on the shipped probe; ``limit`` takes every k-th item (all categories stay)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lorakit.evaluate.compare import name_adapters
    from lorakit.evaluate.generate import answer_loss, generate
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import AdapterSet, set_threads

    console = console or Console(stderr=True)
    items, opens, text = load_items(), load_open(), load_text()
    if limit and limit < len(items):
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    set_threads()
    path = resolve(model, console=console)
    tokenizer = load_tokenizer(path)
    precision = pick_precision()
    models = AdapterSet(load_model(path, precision), name_adapters(adapters))
    report = GeneralReport(items=items, open=opens,
                           meta={"model": model, "model_path": str(path), "items": len(items),
                                 "text_paragraphs": len(text), "max_new_tokens": max_new_tokens,
                                 "precision": precision.why})
    plain = [[{"role": "assistant", "content": p}] for p in text]  # plain text: every token is scored
    prompts = [prompt_ids(tokenizer, it.messages()) for it in items]
    runs = (["base"] if include_base else []) + models.names
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        for name in runs:
            task = prog.add_task(f"general probe: {name}", total=len(items) + len(opens))
            active, ctx = models.use(None if name == "base" else name)
            t0 = time.perf_counter()
            with ctx:
                prefix = shared_prefix(active, prompts, precision=precision)
                chosen = []
                for at in range(0, len(items), 32):  # 32 items (128 rows) per call: the bar moves, memory stays low
                    part = items[at:at + 32]
                    for scores in score_replies(active, tokenizer, prompts[at:at + 32], [it.replies() for it in part],
                                                precision=precision, prefix=prefix, per_token=True):
                        chosen.append(max(range(len(scores)), key=scores.__getitem__))
                    prog.advance(task, len(part))
                loss, _ = answer_loss(active, tokenizer, plain, precision=precision, batch_size=batch_size)
                answers = generate(active, tokenizer, [[{"role": "user", "content": o["prompt"]}] for o in opens],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, precision=precision,
                                   on_batch=lambda n, t=task: prog.advance(t, n))
            report.systems.append(GeneralSystem(name, chosen, [c == it.answer for c, it in zip(chosen, items)],
                                                loss, answers, time.perf_counter() - t0))
    if out_dir:
        write_general_reports(report, Path(out_dir))
    return report


def write_general_reports(report: GeneralReport, out_dir: Path) -> None:
    """general.md (the table and the open answers side by side), general.json, general_items.jsonl."""
    from lorakit.io import write_json, write_jsonl, write_text
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "general.json", report.to_dict())
    write_jsonl(out_dir / "general_items.jsonl",
                [{"id": it.id, "category": it.category, "lang": it.lang, "answer": LETTERS[it.answer],
                  **{s.name: LETTERS[s.chosen[i]] for s in report.systems}} for i, it in enumerate(report.items)])
    write_text(out_dir / "general.md", report.to_markdown())
