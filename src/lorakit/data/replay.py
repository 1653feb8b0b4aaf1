"""Replay without outside data: the base model answers a spread of general requests, and its answers become
training records mixed into a domain fine-tune (self-distillation), so the adapter keeps the base's behaviour
outside the domain.

The requests come from templates lorakit ships (``lorakit/general/replay_prompts.yaml``, in its own words),
filled with seeded choices: the same ``--n`` and ``--seed`` give the same prompts. Generation is greedy and
written batch by batch to a partial file, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from lorakit.data.record import Conversation, Turn
from lorakit.errors import LorakitError

# where a sentence or a line ends; a full stop after a digit ("3.") is a list number, not an end
SENTENCE_END = re.compile(r"[。！？!?]|(?<!\d)\.(?=\s|$)|\n")


def templates_file() -> Path:
    from lorakit.evaluate.general import general_file
    return general_file("replay_prompts.yaml")


def load_templates(path: str | Path | None = None) -> tuple[list[dict], dict[str, list]]:
    path = Path(path) if path else templates_file()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return raw["templates"], raw["slots"]


def slots_of(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def replay_prompts(n: int, *, seed: int = 0, path: str | Path | None = None) -> list[dict]:
    """``n`` distinct prompts, {template, lang, prompt}: templates taken in turn (a seeded order), each filled
    with seeded slot values not used before, so every kind of request is represented."""
    templates, slots = load_templates(path)
    rng = random.Random(seed)
    order = templates[:]
    rng.shuffle(order)
    capacity = {t["id"]: _combinations(t["text"], slots) for t in order}
    if n > sum(capacity.values()):
        raise LorakitError(f"--n {n} is more than the {sum(capacity.values())} distinct prompts the templates make",
                           field="n", hint="Ask for fewer records")
    seen: set[str] = set()
    used = {t["id"]: 0 for t in order}
    out: list[dict] = []
    while len(out) < n:
        for t in order:
            if len(out) == n:
                break
            if used[t["id"]] >= capacity[t["id"]]:
                continue
            while True:  # a fresh filling of this template (it has one left, so this ends)
                prompt = t["text"].format(**{s: rng.choice(slots[s]) for s in slots_of(t["text"])})
                if prompt not in seen:
                    break
            seen.add(prompt)
            used[t["id"]] += 1
            out.append({"template": t["id"], "lang": t["lang"], "prompt": prompt})
    return out


def _combinations(text: str, slots: dict[str, list]) -> int:
    count = 1
    for s in dict.fromkeys(slots_of(text)):
        count *= len(slots[s])
    return count


def complete_part(answer: str, cut: bool) -> str | None:
    """An answer cut at the token limit, trimmed to its last full sentence (None when it has none): training
    on a half sentence followed by the end-of-turn token would teach the model to stop mid-thought."""
    answer = answer.strip()
    if not cut:
        return answer or None
    ends = [m.end() for m in SENTENCE_END.finditer(answer)]
    return (answer[: ends[-1]].strip() or None) if ends else None


@dataclass
class ReplayResult:
    path: Path
    records: int
    trimmed: int  # answers cut at max_new_tokens, kept up to their last sentence
    dropped: int  # answers with no usable text
    resumed: int


def replay(model: str, out: str | Path, *, n: int, seed: int = 0, adapter: str | Path | None = None,
           max_new_tokens: int = 256, batch_size: int = 8, system: str | None = None,
           on_progress: Callable[[int, int], None] | None = None, console=None) -> ReplayResult:
    """Ask ``model`` (the base the adapter will be trained on) the seeded prompts and write its answers."""
    from lorakit.evaluate.generate import generate
    from lorakit.io import append_jsonl, write_jsonl
    from lorakit.rag.answer import load_generator

    if n < 1:
        raise LorakitError("--n must be at least 1", field="n")
    out = Path(out)
    prompts = replay_prompts(n, seed=seed)
    partial = out.with_name(out.name + ".partial")
    done: dict[str, dict] = {}
    if partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["prompt"]] = row
    resumed = sum(1 for p in prompts if p["prompt"] in done)
    todo = [p for p in prompts if p["prompt"] not in done]
    if todo:
        lm, tokenizer, precision = load_generator(model, adapter, console=console)
        out.parent.mkdir(parents=True, exist_ok=True)
        step = batch_size * 4
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            msgs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p["prompt"]}]
                    for p in chunk]
            answers = generate(lm, tokenizer, msgs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               precision=precision)
            for p, a in zip(chunk, answers):
                cut = len(tokenizer(a, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1
                row = {**p, "answer": a, "cut": cut}
                append_jsonl(partial, row)
                done[p["prompt"]] = row
            if on_progress:
                on_progress(resumed + start + len(chunk), len(prompts))
    name = f"{model}+{adapter}" if adapter else str(model)
    records, trimmed, dropped = [], 0, 0
    for p in prompts:
        row = done[p["prompt"]]
        answer = complete_part(row["answer"], row["cut"])
        if answer is None:
            dropped += 1
            continue
        trimmed += int(row["cut"])
        turns = [Turn("user", p["prompt"]), Turn("assistant", answer)]
        records.append(Conversation(turns=turns, system=system,
                                    source={"replay": p["template"], "model": name, "seed": seed}))
    if not records:
        raise LorakitError(f"the model gave no usable answer to any of the {len(prompts)} prompts (each was empty, "
                           f"or cut at {max_new_tokens} tokens before its first full sentence)", file=partial,
                           field="max_new_tokens", hint="Raise --max-new-tokens; the answers so far are kept in "
                                                        "the partial file and reused")
    write_jsonl(out, [r.to_dict() for r in records])
    partial.unlink(missing_ok=True)
    return ReplayResult(out, len(records), trimmed, dropped, resumed)


def mix_replay(train: list, replay_records: list, ratio: float, seed: int) -> tuple[list, int]:
    """The training records plus ``round(ratio × len(train))`` replay records (a seeded sample; all of them when
    the file holds fewer). Returns the mix and how many replay records went in."""
    want = max(1, round(ratio * len(train)))
    picked = replay_records if len(replay_records) <= want else random.Random(seed).sample(replay_records, want)
    return train + list(picked), len(picked)
