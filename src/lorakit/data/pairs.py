"""`lorakit data pairs`: preference pairs from the domain itself, for DPO on what a model really gets wrong.

Input: Q&A records whose reference answers are grounded in a known article (``source.article``, e.g. what
`lorakit data build` writes and the bundled demo holds). For each question the model (base, or base + the SFT
adapter to improve) answers; an answer becomes the *rejected* reply of a pair, with the reference as *chosen*, when
it is worse in a way a reader can check:

* ``wrong_article``: it cites an article, but not the one the reference cites (第八十条 for 第九十一条);
* ``no_article``: it cites no article where the reference does (optional, on by default: the domain's answers
  must say their basis);
* ``unsupported_figures``: it states a figure (a fine, a term, points, a speed) that neither the reference nor
  the article's passage states, read with the figure checker of `lorakit.rag.figures` (so 二千元 = 2000元 and 半年 =
  六个月 match, 1500元 does not).

Answers without such a defect make no pair (DPO would push a good answer down). With ``samples`` > 1 and a
``temperature`` each question is answered several times, and each distinct defective answer makes a pair.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lorakit.data.record import Conversation, Preference, Turn
from lorakit.errors import LorakitError

REASONS = ("wrong_article", "no_article", "unsupported_figures")


def defect(answer: str, reference: str, article: str | None, passages: Sequence[str] = ()) -> tuple[str, str] | None:
    """(reason, detail) when ``answer`` is checkably worse than ``reference``; None when no defect is found."""
    from lorakit.evaluate.metrics import articles
    from lorakit.rag.figures import unsupported_figures
    want = articles(article or "") or articles(reference)
    got = articles(answer)
    if want and got and not (want & got):
        return "wrong_article", f"cites 第{'、'.join(map(str, sorted(got)))}条, the reference 第{'、'.join(map(str, sorted(want)))}条"
    if want and not got:
        return "no_article", "cites no article"
    bad = unsupported_figures(answer, [reference, *passages])
    if bad:
        return "unsupported_figures", "states " + ", ".join(f.text for f in bad[:4]) + ", which the reference does not"
    return None


@dataclass
class PairsResult:
    path: Path
    questions: int
    answers: int
    pairs: int
    reasons: Counter = field(default_factory=Counter)
    no_defect: int = 0  # answers in which no defect was found (no pair made)


def make_pairs(records: Sequence[Conversation], answer_fn: Callable[[list[list[dict]]], list[str]], *,
               samples: int = 1, reasons: Sequence[str] = REASONS,
               passages: Callable[[Conversation], list[str]] | None = None) -> tuple[list[Preference], Counter, int]:
    """Ask ``answer_fn`` every question ``samples`` times and keep the defective answers as rejected replies."""
    prompts = [r.prompt_messages() for r in records]
    answers = answer_fn([p for p in prompts for _ in range(samples)])
    out: list[Preference] = []
    counts: Counter = Counter()
    clean = 0
    for i, r in enumerate(records):
        seen: set[str] = set()
        shown = passages(r) if passages else []
        for answer in answers[i * samples:(i + 1) * samples]:
            answer = answer.strip()
            if not answer or answer in seen:
                continue
            seen.add(answer)
            found = defect(answer, r.answer, r.source.get("article"), shown)
            if found is None or found[0] not in reasons:
                clean += found is None
                continue
            counts[found[0]] += 1
            prompt = Conversation.from_messages(prompts[i]).turns
            out.append(Preference(prompt=prompt, chosen=[Turn("assistant", r.answer)],
                                  rejected=[Turn("assistant", answer)], system=r.system,
                                  source={k: v for k, v in r.source.items() if k not in ("file", "line")},
                                  meta={"rejected_because": found[0], "detail": found[1]}))
    return out, counts, clean


def pairs(data: str | Path, out: str | Path, *, model: str, adapter: str | Path | None = None, samples: int = 1,
          temperature: float = 0.0, max_new_tokens: int = 160, batch_size: int = 8, limit: int | None = None,
          reasons: Sequence[str] = REASONS, console=None) -> PairsResult:
    """Read the Q&A records, let the model answer, write the pairs (TRL's preference form) to ``out``."""
    from lorakit.data.formats import read_records, write_records
    from lorakit.evaluate.generate import generate
    from lorakit.serve.chat import load_chat_model
    unknown = [r for r in reasons if r not in REASONS]
    if unknown:
        raise LorakitError(f"unknown reason '{unknown[0]}'", field="reasons", hint="Known: " + ", ".join(REASONS))
    if samples > 1 and temperature <= 0:
        raise LorakitError("--samples above 1 needs a --temperature above 0 (greedy answers are all the same)",
                           field="samples")
    records = [r for r in read_records(data) if isinstance(r, Conversation) and r.prompt and r.answer]
    if not records:
        raise LorakitError("no Q&A record (a question and a reference answer) to make pairs from", file=data)
    records = records[:limit] if limit else records
    lm, tok, precision = load_chat_model(model, adapter, console)

    def answer_fn(convs):
        return generate(lm, tok, convs, max_new_tokens=max_new_tokens, batch_size=batch_size, precision=precision,
                        temperature=temperature)

    made, counts, clean = make_pairs(records, answer_fn, samples=samples, reasons=reasons)
    if not made:
        raise LorakitError(f"none of the {len(records) * samples} answers had a defect lorakit can check, so no pair "
                           "was made", file=data, hint="The model already cites and quotes these articles right; try "
                           "--samples 4 --temperature 0.8, or other questions")
    write_records(out, made, "preference")
    return PairsResult(Path(out), len(records), len(records) * samples, len(made), counts, clean)
