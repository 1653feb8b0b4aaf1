"""Retrieval-augmented fine-tuning data (RAFT, Zhang et al. 2024): teach the model to answer from passages.

A model fine-tuned on bare questions learns the domain's style but not to read what retrieval shows it: given
passages it keeps citing from memory. RAFT records put the question and k retrieved passages in the user turn,
laid out exactly as `lorakit rag ask` shows them (`lorakit.rag.answer.rag_messages`, one function for both):

* with probability ``p_gold`` the source article is among them, where retrieval puts it, beside hard distractors
  (the articles retrieval ranks highest for the question that are not the source); the answer is the record's
  own, which cites that article (a citation is added when it does not) and whose figures must be stated by it
  (`lorakit.rag.figures`; a record whose answer has figures its article does not state is not used for RAFT);
* otherwise only distractors are shown, and the answer says the passages do not answer the question instead
  of inventing one (what the model should do when retrieval misses);
* the plain question-only records stay in the mix, so the model still answers without retrieval;
* with ``judge`` > 0, relevance judgements join the mix (`lorakit.rag.rerank.judge_records`: the question and
  one article, answered 是 for the source and 否 for ``judge`` hard negatives), so the adapter can rerank what
  retrieval finds (``--rerank N`` with the adapter as the answering model).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lorakit.errors import LorakitError
from lorakit.rag.answer import _NUM, is_chinese
from lorakit.rag.index import Hit, Index

@dataclass
class RaftStats:
    records: int = 0  # input records
    raft: int = 0  # RAFT records written
    with_gold: int = 0
    without_gold: int = 0
    plain: int = 0  # question-only records kept
    no_source: int = 0  # records whose source is not an indexed article (kept plain only)
    cited_added: int = 0  # answers that did not cite their article and got a citation prefix
    unfaithful: list[str] = field(default_factory=list)  # "question — figures": not used for RAFT
    judge: int = 0  # relevance-judgement records (question + one article → 是/否), see rerank.judge_records

    def as_dict(self) -> dict:
        return {k: (v if not isinstance(v, list) else len(v)) for k, v in self.__dict__.items()}


# A leading citation of the record's own answer (根据《道路交通安全法》第九十一条，…), replaced by the passage's label.
_LEADING_CITE = re.compile(rf"^\s*(根据|依据|按照)?\s*《[^《》]{{1,60}}》\s*第[{_NUM}]+条(之[一二三四五六七八九十\d]+)?"
                           r"(的规定)?\s*[，,：:]?\s*")


def grounded_answer(question: str, answer: str, hit: Hit, titles: Sequence[str]) -> tuple[str, bool]:
    """``answer`` as a grounded answer resting on ``hit``: it begins with `citation_start` (the passage's label as
    shown, so that the answer's first words point at a passage), replacing the record's own leading citation
    of the same article. Returns (answer, whether a citation was added that the record did not have)."""
    from lorakit.rag.answer import citation_start, citations
    from lorakit.rag.ingest import chunk_key
    start = citation_start(question, hit) + ("，" if is_chinese(question) else ", ")
    m = _LEADING_CITE.match(answer)
    if m:
        lead = citations(m.group(0), titles)
        if lead and lead[0].resolved == hit.chunk.document and lead[0].key == chunk_key(hit.chunk):
            return start + answer[m.end():], False
    cited = any(c.resolved == hit.chunk.document and c.key == chunk_key(hit.chunk) for c in citations(answer, titles))
    return start + answer, not cited


ORDERS = ("retrieval", "random")


def raft_records(index: Index, records: Sequence, *, k: int = 3, p_gold: float = 0.8, seed: int = 0,
                 max_chars: int = 600, distractor_pool: int = 8, keep_plain: bool = True,
                 plain_share: float = 1.0, copies: int = 1, order: str = "retrieval",
                 judge: int = 0, recipe=None) -> tuple[list[dict], RaftStats]:
    """RAFT records (messages format, with ``source`` and a ``raft`` note) for ``records`` over ``index``.

    Passages come from ``recipe`` (default: the index's default mode without learned data, so a training
    question does not find itself through the log it is part of). ``order``:

    * ``retrieval`` (default): the passages are the question's own top ``k``, in retrieval order, as `rag ask`
      would show them; a record drawn to show its source article keeps it where retrieval put it, or, when
      retrieval missed it, puts it at a rank drawn from where retrieval puts the sources it does find (so the
      position prior the model learns is the one it meets at answer time); a record drawn without it shows
      the top ``k`` other passages;
    * ``random``: the source at a uniformly random position among ``k − 1`` passages drawn from the first
      ``distractor_pool`` others (RAFT as published). Measured on the bundled short set, the model trained
      this way cited passages 2 and 3 about half the time and was right on 2 of 22 such citations, while
      the source was first for two thirds of the questions it was shown for.

    ``copies``: RAFT records per training record, each its own draw (random order: distractors and position).
    ``plain_share``: the share of plain question-only records kept (a seeded draw), when ``keep_plain``.
    ``judge``: relevance-judgement records per question with an indexed source: 1 yes + ``judge`` no (0: none).
    """
    from lorakit.rag.answer import no_answer, rag_messages
    from lorakit.rag.figures import unsupported_figures
    from lorakit.rag.ingest import source_chunks
    from lorakit.rag.retrieve import Recipe, Retriever

    if k < 1:
        raise LorakitError(f"k must be at least 1 (got {k})", field="k")
    if order not in ORDERS:
        raise LorakitError(f"unknown passage order '{order}'", field="order", hint="Use retrieval or random")
    if copies < 1:
        raise LorakitError(f"copies must be at least 1 (got {copies})", field="copies")
    if judge < 0:
        raise LorakitError(f"judge must be 0 (none) or the number of negatives per question (got {judge})",
                           field="judge")
    if not 0.0 <= p_gold <= 1.0:
        raise LorakitError(f"the share of records with the source article shown must be within 0..1 (got {p_gold})",
                           field="p_gold")
    if not 0.0 <= plain_share <= 1.0:
        raise LorakitError(f"the share of plain records kept must be within 0..1 (got {plain_share})",
                           field="plain_share")
    rng, keep = random.Random(seed), random.Random(seed + 1)
    retriever = Retriever(index, recipe or Recipe(learned=False))
    stats = RaftStats(records=len(records))
    out: list[dict] = []
    questions = [r.prompt for r in records]
    rankings = retriever.rankings(questions) if questions else []
    sources = [source_chunks(r.source, index.chunks)[0] for r in records]
    def rank_in_top_k(ranked, ids) -> int | None:
        return next((p for p, (i, _, _) in enumerate(ranked[:k]) if i in ids), None)

    # Where retrieval puts a source it finds within the top k: the ranks a missed source is placed at.
    found = [p for ids, ranked in zip(sources, rankings) if ids for p in [rank_in_top_k(ranked, ids)] if p is not None]
    for r, ranked, ids in zip(records, rankings, sources):
        base = {"messages": r.prompt_messages() + [{"role": "assistant", "content": r.answer}]}
        if r.source:
            base["source"] = r.source
        if keep_plain and keep.random() < plain_share:
            out.append(base)
            stats.plain += 1
        if not ids:
            stats.no_source += 1
            continue
        gold = ids[0]
        bad = unsupported_figures(r.answer, [index.chunks[gold].text])
        if bad:
            stats.unfaithful.append(f"{r.prompt[:40]} — {', '.join(f.text for f in bad)}")
            continue
        others = [i for i, _, _ in ranked if i not in ids]
        for _ in range(copies):
            show_gold = rng.random() < p_gold
            if order == "random":
                picked = rng.sample(others[:distractor_pool], min(k - 1 if show_gold else k, len(others[:distractor_pool])))
                if show_gold:
                    picked.insert(rng.randrange(len(picked) + 1), gold)
            else:
                at = rank_in_top_k(ranked, ids)
                picked = others[:k - 1 if show_gold else k]
                if show_gold:
                    picked.insert(at if at is not None else (rng.choice(found) if found else rng.randrange(k)), gold)
            hits = [Hit(i, index.chunks[i], 0.0, p + 1) for p, i in enumerate(picked)]
            if show_gold:
                answer, added = grounded_answer(r.prompt, r.answer, hits[picked.index(gold)], index.titles)
                stats.cited_added += added
                stats.with_gold += 1
            else:
                answer = no_answer(r.prompt)
                stats.without_gold += 1
            msgs = rag_messages(r.prompt, hits, max_chars=max_chars, system=r.system)
            out.append({"messages": msgs + [{"role": "assistant", "content": answer}], "source": r.source,
                        "raft": {"gold_shown": show_gold, "passages": [h.label for h in hits]}})
            stats.raft += 1
    if judge:
        from lorakit.rag.rerank import judge_records
        judged = judge_records(index, records, rankings, negatives=judge, seed=seed + 2)
        stats.judge = len(judged)
        out += judged
    rng.shuffle(out)
    return out, stats


def build_raft(index: Index, data: str | Path, out: str | Path, **kw) -> RaftStats:
    """Read ``data`` (any format `lorakit data` reads), write the RAFT mix to ``out`` (JSONL, atomically)."""
    from lorakit.evaluate.compare import load_eval_records
    from lorakit.io import write_jsonl
    records = load_eval_records(data)
    rows, stats = raft_records(index, records, **kw)
    if not stats.raft:
        raise LorakitError("no record has a source (document + article) that names an indexed article, so no RAFT "
                           "record could be made", file=data, field="source",
                           hint="Give records with source.document and source.article matching the indexed documents")
    write_jsonl(out, rows)
    return stats
