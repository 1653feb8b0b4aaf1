"""Base, base + RAG, fine-tuned, fine-tuned + RAG on one held-out set, with retrieval recall@k and citations.

`retrieval_recall` measures the index alone: a test record's ``source`` (document + article) names the chunk
that answers it; recall@k is the share of questions whose chunk is among the first k retrieved, MRR the mean
of 1/rank. Test sets often write documents by short names, so ``source.document`` is mapped to an indexed
title by `lorakit.rag.ingest.resolve_document` (equal after normalising, else containment, else the most
abbreviated title) and the article by its number and 之N; a record whose law is not in the index is never
matched to the closest-looking title: it is counted as unmatched, listed, and left out of recall.

`rag_compare` loads the base model once, attaches each adapter by name, and runs every system twice: on the
bare question, and on the question over the same retrieved passages (`lorakit.rag.answer.rag_messages`).
Each system gets the metrics of `lorakit.evaluate` (teacher-forced loss of the reference answer given that
system's prompt, ROUGE, BLEU, keywords, article-number citation) plus two citation checks that need the
corpus: the law *and* the article cited (`citation_exact`) and the share of cited articles that exist in the
indexed documents (`citation_known`). Reports: the usual eval.html / eval.md / eval.json / answers.jsonl of
`lorakit eval`, plus rag.md and rag.json (retrieval, four-way table, passages shown per question) and
retrieved.jsonl.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from lorakit.errors import LorakitError
from lorakit.evaluate import metrics as M
from lorakit.evaluate.generate import EVAL_BATCH
from lorakit.rag.answer import Citation, citations
from lorakit.rag.figures import unsupported_figures
from lorakit.rag.index import MODES, Index
from lorakit.rag.ingest import _article_number, article_key, chunk_key, resolve_document, source_chunks

KS = (1, 3, 5)
# The metrics of the four-way table, in order; the first eight are `lorakit.evaluate.compare.METRICS`.
RAG_METRICS = ("loss", "perplexity", "rouge_l", "rouge_1", "bleu_4", "exact_match", "keywords", "citation",
               "citation_exact", "citation_shown", "citation_known", "unsupported_figures", "abstains")
SHORT = {"loss": "loss", "perplexity": "ppl", "rouge_l": "ROUGE-L", "rouge_1": "ROUGE-1", "bleu_4": "BLEU-4",
         "exact_match": "EM", "keywords": "keyw.", "citation": "cite art.", "citation_exact": "cite law+art.",
         "citation_shown": "cite | shown", "citation_known": "cites exist", "unsupported_figures": "unsupp. fig.",
         "abstains": "says no basis"}
HELP = {"citation": "cites the reference's article number",
        "citation_exact": "cites the reference's law and article (《…》第X条, short law names allowed)",
        "citation_shown": "citation_exact over the questions whose source article was among the passages shown to "
                          "the +rag systems (separates retrieval misses from answering misses)",
        "citation_known": "share of the articles cited that exist in the indexed documents",
        "unsupported_figures": "share of answers stating a figure (fine, days, points, years…) that no passage shown "
                               "states; for a system without retrieval, that its source article does not state",
        "abstains": "over the questions whose answer is in no indexed law (source.in_index false, or a law not in "
                    "the index): share of answers that say the material gives no basis instead of citing one"}


# ============================================================================ retrieval
def source_target(source: dict, index: Index) -> tuple[list[int], str | None, str | None]:
    """(chunk ids that answer a record, the indexed title its document maps to, why nothing matched)."""
    return source_chunks(source, index.chunks)


@dataclass
class Retrieval:
    ks: tuple[int, ...]
    modes: dict[str, dict[str, float]]  # mode → {"recall@1": …, "mrr": …}
    total: int
    matched: int
    unmatched: list[str] = field(default_factory=list)  # "question — why"
    mappings: dict[str, str] = field(default_factory=dict)  # test-set document name → indexed title, when not equal
    per_record: list[dict] = field(default_factory=list)  # target label and rank per mode (None: not in the list)

    def table(self, title: str = "retrieval") -> Table:
        if not self.matched:
            t = Table(title=f"{title}: not measured (no question has a source.document and source.article that "
                            "match an indexed article)")
            t.add_column("why")
            for why in sorted({u.split(" — ", 1)[-1] for u in self.unmatched})[:5]:
                t.add_row(why)
            return t
        t = Table(title=f"{title}: {self.matched} of {self.total} questions with a source article in the index")
        t.add_column("retrieval (levers)", no_wrap=True)
        for k in self.ks:
            t.add_column(f"recall@{k}", justify="right")
        t.add_column("MRR", justify="right")
        t.add_column("s / question", justify="right")
        for mode, row in self.modes.items():
            t.add_row(mode, *[f"{row[f'recall@{k}']:.3f}" for k in self.ks], f"{row['mrr']:.3f}",
                      f"{row.get('seconds', 0):.3f}")
        return t

    def as_dict(self) -> dict:
        return {"ks": list(self.ks), "modes": self.modes, "total": self.total, "matched": self.matched,
                "unmatched": self.unmatched, "mappings": self.mappings}


def default_recipes(index: Index, lm_levers: bool = False, base: "Recipe | None" = None) -> list["Recipe"]:
    """Each lever on its own: every mode without and (when the index has it) with what it learned from Q&A
    records; with a model, LM query rewriting and LM reranking on top of ``base`` (the recipe answers use)."""
    from lorakit.rag.retrieve import Recipe
    modes = [*MODES] if index.has_dense else ["bm25"]
    out = [Recipe(mode=m, learned=False) for m in modes]
    if index.has_learned:
        out += [Recipe(mode=m, learned=True) for m in modes]
        if index.fusion is not None:  # the learned fusion beside RRF, for the mode it was fit for
            out.append(Recipe(mode=index.fusion.mode, learned=True, fusion="learned"))
    if lm_levers:
        base = (base or Recipe()).resolved(index)
        out += [replace(base, rewrite="answer", rerank=0), replace(base, rewrite="terms", rerank=0),
                replace(base, rewrite=None, rerank=20)]
    seen, unique = set(), []
    for r in out:
        r = r.resolved(index)
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def retrieval_recall(index: Index, records: Sequence, *, ks: Sequence[int] = KS, recipes: Sequence | None = None,
                     lm=None, batch_size: int = 8, known: dict | None = None) -> Retrieval:
    """Recall@k, MRR and seconds per question of each retrieval recipe over records with ``source.document``
    and ``source.article``. A record whose law is not in the index is listed as such, never matched to the
    closest-looking title, and left out of recall. ``known``: {recipe: (rankings of every record, seconds)}
    already computed by the caller (so the LM levers do not generate twice)."""
    from lorakit.rag.retrieve import Retriever
    recipes = list(recipes or default_recipes(index))
    ks = tuple(sorted(set(ks)))
    res = Retrieval(ks, {}, len(records), 0)
    targets = []
    for r in records:
        ids, title, why = source_target(r.source, index)
        doc = (r.source or {}).get("document")
        if title and doc and doc != title:
            res.mappings[doc] = title
        if not ids:
            res.unmatched.append(f"{r.prompt[:40]} — {why}")
        targets.append(set(ids))
    asked = [r.prompt for r, t in zip(records, targets) if t]
    wanted = [t for t in targets if t]
    res.matched = len(asked)
    ranks_of: dict[str, list[int | None]] = {}
    for recipe in recipes:
        retriever = Retriever(index, recipe, lm, batch_size=batch_size)
        label = retriever.recipe.label()
        if known and retriever.recipe in known:
            every, total = known[retriever.recipe]
            orders = [o for o, t in zip(every, targets) if t]
            seconds = total / max(len(records), 1)
        else:
            t0 = time.perf_counter()
            orders = retriever.rankings(asked) if asked else []
            seconds = (time.perf_counter() - t0) / max(len(asked), 1)
        ranks_of[label] = ranks = _target_ranks(orders, wanted)
        res.modes[label] = _recall_row(ranks, ks, seconds)
    it = iter(range(len(asked)))
    for r, want in zip(records, targets):
        if not want:
            why = source_target(r.source, index)[2]
            res.per_record.append({"question": r.prompt, "target": None, "why": why})
            continue
        n = next(it)
        c = index.chunks[min(want)]
        res.per_record.append({"question": r.prompt, "target": f"《{c.document}》{c.article}",
                               "ranks": {label: ranks[n] for label, ranks in ranks_of.items()}})
    return res


def _target_ranks(orders: Sequence, wanted: Sequence[set]) -> list[int | None]:
    """1-based rank of the first target chunk in each ranking (None: not in it)."""
    return [next((p + 1 for p, (i, _, _) in enumerate(order) if i in want), None) for order, want in zip(orders, wanted)]


def _recall_row(ranks: Sequence[int | None], ks: Sequence[int], seconds: float) -> dict[str, float]:
    n = max(len(ranks), 1)
    return {**{f"recall@{k}": sum(1 for x in ranks if x and x <= k) / n for k in ks},
            "mrr": sum(1 / x for x in ranks if x) / n, "seconds": seconds}


def add_ranking(ret: Retrieval, index: Index, records: Sequence, label: str, rankings: Sequence,
                seconds: float) -> None:
    """One more row of ``ret``: rankings of every record made elsewhere (an adapter reranking as the
    answering model), measured like the recipes of `retrieval_recall`."""
    targets = [set(source_target(r.source, index)[0]) for r in records]
    ranks = _target_ranks([o for o, t in zip(rankings, targets) if t], [t for t in targets if t])
    ret.modes[label] = _recall_row(ranks, ret.ks, seconds / max(len(records), 1))
    it = iter(ranks)
    for rec in ret.per_record:
        if rec.get("target") is not None:
            rec["ranks"][label] = next(it)


# ============================================================================ citations
_NO_BASIS = re.compile(r"(没有|未|无|不)[^，。,.]{0,8}(条文|规定|依据|资料|涉及|覆盖|包括)|无法据此|不在[^，。]{0,6}范围"
                       r"|(do|does) not (answer|cover)|none of the (reference )?passages|no (legal )?basis", re.I)


def says_no_basis(answer: str) -> bool:
    """The answer says the material gives no basis (参考资料中没有…条文, 无法据此…), instead of citing one."""
    return bool(_NO_BASIS.search(answer or ""))


def unanswerable(source: dict | None, index: Index) -> bool:
    """The record says its answer is in no indexed law, or names a law the index does not hold."""
    source = source or {}
    if source.get("in_index") is False:
        return True
    return bool(source.get("document")) and resolve_document(source["document"], index.titles) is None



def citation_exact(prediction: str, source: dict | None, titles: Sequence[str]) -> float | None:
    """1 when the answer cites the reference's law and article, 0 when not, None when the record has no source."""
    source = source or {}
    number = _article_number(source.get("article"))
    want = resolve_document(source.get("document"), titles) or source.get("document")
    if number is None or not want:
        return None
    key = article_key(source.get("article"))
    return float(any(c.key == key and c.resolved == want for c in citations(prediction, titles)))


def citation_known(cites: Sequence[Citation], index: Index) -> float | None:
    """Share of cited articles that exist in the index (a bare 第X条: in any document); None without citations."""
    if not cites:
        return None
    have = {(c.document, chunk_key(c)) for c in index.chunks}
    keys = {chunk_key(c) for c in index.chunks}
    ok = [((c.resolved, c.key) in have) if c.document else (c.key in keys) for c in cites]
    return sum(ok) / len(ok)


# ============================================================================ the four-way comparison
@dataclass
class RagComparison:
    comparison: object  # lorakit.evaluate.compare.Comparison
    retrieval: Retrieval
    hits: list[list]  # the passages shown to the +rag systems, per question
    mode: str
    k: int
    target_shown: list[bool | None] = field(default_factory=list)  # per question: was its source article shown?
    # +rag systems whose own model reranked / rewrote: name → (passages shown, source shown?) per question
    by_system: dict[str, tuple[list, list]] = field(default_factory=dict)

    def shown_share(self, system: str | None = None) -> tuple[int, int]:
        shown = self.by_system[system][1] if system in self.by_system else self.target_shown
        known = [t for t in shown if t is not None]
        return sum(known), len(known)

    def table(self, title: str = "base / RAG / fine-tuned / fine-tuned + RAG") -> Table:
        from lorakit.evaluate.compare import _best
        systems = self.comparison.systems
        shown = [m for m in RAG_METRICS if m not in ("perplexity", "rouge_1", "bleu_4", "exact_match")]
        t = Table(title=title)
        t.add_column("system", no_wrap=True)
        for m in shown:
            t.add_column(SHORT[m], justify="right")
        t.add_column("s", justify="right")
        best = {m: _best(m, [s.summary.get(m) for s in systems]) for m in shown}
        for s in systems:
            cells = []
            for m in shown:
                v = s.summary.get(m)
                txt = "–" if v is None else f"{v:.3f}"
                cells.append(f"[bold green]{txt}[/]" if v is not None and v == best[m] and len(systems) > 1 else txt)
            t.add_row(s.name, *cells, f"{s.seconds:.0f}")
        return t


def rag_compare(index: Index, data: str | Path, *, model: str, adapters: Sequence[str | Path] = (),
                out_dir: str | Path | None = None, k: int = 3, mode: str | None = None, max_chars: int = 600,
                max_new_tokens: int = 128, batch_size: int = EVAL_BATCH, limit: int | None = None,
                system_prompt: str | None = None, recipe=None, levers: bool = False, cite_shown: bool = True,
                console: Console | None = None) -> RagComparison:
    """The four-way comparison. ``recipe`` (`lorakit.rag.retrieve.Recipe`, default: ``mode`` with what the index
    learned) picks the passages shown; ``levers`` also measures LM query rewriting and reranking alone;
    ``cite_shown``: the +rag systems' answers begin by citing a passage shown (`lorakit.rag.answer.answer_starts`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lorakit.evaluate.compare import Comparison, SystemResult, load_eval_records, name_adapters
    from lorakit.evaluate.generate import answer_loss, generate, perplexity
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import AdapterSet, set_threads
    from lorakit.rag.answer import answer_starts, context_budget, fit_messages

    from lorakit.rag.retrieve import Recipe, Retriever, top_hits

    console = console or Console(stderr=True)
    recipe = (recipe or Recipe(mode=mode)).resolved(index)
    mode = recipe.mode
    if k < 1:
        raise LorakitError(f"k must be at least 1 (got {k})", field="k")
    records = load_eval_records(data, limit=limit, system_prompt=system_prompt)

    set_threads()
    path = resolve(model, console=console)
    tokenizer = load_tokenizer(path)
    precision = pick_precision()
    base = load_model(path, precision)
    lm = (base, tokenizer, precision)  # the LM levers use the bare base model, before adapters are attached
    recipes = default_recipes(index, lm_levers=levers, base=recipe)
    if recipe not in recipes:
        recipes.append(recipe)
    with console.status("retrieving and measuring retrieval…"):
        retriever = Retriever(index, recipe, lm if recipe.needs_model else None, batch_size=batch_size)
        t0 = time.perf_counter()
        ranked = retriever.rankings([r.prompt for r in records])
        known = {retriever.recipe: (ranked, time.perf_counter() - t0)}
        hits = top_hits(index, ranked, k)
        retrieval = retrieval_recall(index, records, recipes=recipes, lm=lm, batch_size=batch_size, known=known)
    models = AdapterSet(base, name_adapters(adapters, reserved=("base", "base+rag")))
    named = models.names
    # With LM levers in the recipe, each adapter rewrites / reranks as the answering model (as `rag ask` does):
    # its own passages, and its own row in the retrieval table.
    hits_of = {None: hits}
    if recipe.needs_model:
        for name in named:
            active, ctx = models.use(name)
            with ctx, console.status(f"retrieving with {name} as the answering model…"):
                t0 = time.perf_counter()
                ranked_by = Retriever(index, recipe, (active, tokenizer, precision), batch_size=batch_size).rankings(
                    [r.prompt for r in records])
                add_ranking(retrieval, index, records, f"{recipe.label()} by {name}", ranked_by,
                            time.perf_counter() - t0)
            hits_of[name] = top_hits(index, ranked_by, k)

    budget = context_budget(base, max_new_tokens)
    plain = [r.prompt_messages() for r in records]
    shown_of: dict = {}  # adapter name (None: base) → (rag prompts, passages used, source shown?) per question
    for name, system_hits in hits_of.items():
        rag, shown, target_shown = [], [], []
        for r, h in zip(records, system_hits):
            msgs, used = fit_messages(tokenizer, r.prompt, h, budget=budget, max_chars=max_chars, system=r.system)
            rag.append(msgs)
            shown.append(used)
            want = set(source_target(r.source, index)[0])
            target_shown.append(bool(want & {x.id for x in used}) if want else None)
        shown_of[name] = (rag, shown, target_shown)
    runs = [("base", None, False), ("base+rag", None, True)]
    for name in named:
        runs += [(name, name, False), (f"{name}+rag", name, True)]

    titles = index.titles
    result = Comparison(questions=[r.prompt for r in records], references=[r.answer for r in records],
                        meta={"model": model, "model_path": str(path), "data": str(data), "n": len(records),
                              "max_new_tokens": max_new_tokens, "precision": precision.why,
                              "index": str(index.path), "mode": mode, "retrieval": recipe.label(), "k": k,
                              "citations": "held to the passages shown" if cite_shown else "free",
                              "max_chars": max_chars,
                              "adapters": [str(a) for a in adapters]})
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as prog:
        for name, adapter, use_rag in runs:
            task = prog.add_task(f"generating: {name}", total=len(records))
            active, ctx = models.use(adapter)
            rag, shown, target_shown = shown_of.get(adapter, shown_of[None])
            prompts = rag if use_rag else plain
            starts = [answer_starts(r.prompt, used) for r, used in zip(records, shown)] if use_rag and cite_shown \
                else None
            full = [p + [{"role": "assistant", "content": r.answer}] for p, r in zip(prompts, records)]
            t0 = time.perf_counter()
            with ctx:
                loss, per_loss = answer_loss(active, tokenizer, full, precision=precision, batch_size=batch_size,
                                             max_length=budget + max_new_tokens + 1024)
                answers = generate(active, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   precision=precision, on_batch=lambda n, t=task: prog.advance(t, n), starts=starts)
            seconds = time.perf_counter() - t0
            per = []
            for r, ans, lo, seen, used in zip(records, answers, per_loss, target_shown, shown):
                if use_rag:
                    evidence = [h.chunk.text for h in used]
                else:
                    gold = source_target(r.source, index)[0]
                    evidence = [index.chunks[gold[0]].text] if gold else []
                bad = unsupported_figures(ans, evidence)
                s = M.score(ans, r.answer, keywords=r.meta.get("keywords"), article=r.source.get("article"))
                s["citation_exact"] = citation_exact(ans, r.source, titles)
                s["citation_shown"] = s["citation_exact"] if seen else None
                s["citation_known"] = citation_known(citations(ans, titles), index)
                s["unsupported_figures"] = float(bool(bad))
                s["abstains"] = float(says_no_basis(ans)) if unanswerable(r.source, index) else None
                s["unsupported"] = [f.text for f in bad]
                s["loss"] = lo
                per.append(s)
            summary = {m: M.mean(p[m] for p in per) for m in RAG_METRICS if m not in ("loss", "perplexity")}
            summary.update(loss=loss, perplexity=perplexity(loss), seconds=round(seconds, 1), rag=use_rag)
            result.systems.append(SystemResult(name, answers, per, summary, seconds))
    _, shown, target_shown = shown_of[None]
    out = RagComparison(result, retrieval, shown, mode, k, target_shown,
                        by_system={f"{n}+rag": (v[1], v[2]) for n, v in shown_of.items() if n is not None})
    if out_dir:
        write_rag_reports(out, Path(out_dir))
    return out


# ============================================================================ reports
def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def retrieval_markdown(ret: Retrieval) -> list[str]:
    """The retrieval section of rag.md: one row per recipe (each lever alone), mappings and records left out."""
    lines = [f"## Retrieval ({ret.matched} of {ret.total} questions with a source article in the index)", "",
             "| retrieval (levers) | " + " | ".join(f"recall@{k}" for k in ret.ks) + " | MRR | s / question |",
             "|---" * (len(ret.ks) + 3) + "|"]
    for mode, row in (ret.modes.items() if ret.matched else ()):
        lines.append(f"| {mode} | " + " | ".join(f"{row[f'recall@{k}']:.3f}" for k in ret.ks)
                     + f" | {row['mrr']:.3f} | {row.get('seconds', 0):.3f} |")
    if ret.mappings:
        lines += ["", "Document names of the test set mapped to indexed titles: "
                  + "; ".join(f"{a} → {b}" for a, b in ret.mappings.items()) + "."]
    if ret.unmatched:
        lines += ["", f"Left out of recall ({len(ret.unmatched)}): " + "; ".join(ret.unmatched[:10]) + "."]
    return lines


def write_retrieval_reports(ret: Retrieval, out_dir: Path, meta: dict) -> None:
    """rag.md, rag.json and retrieved.jsonl of a retrieval-only evaluation (no model answered)."""
    from lorakit.io import write_json, write_jsonl, write_text
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "rag.json", {"meta": meta, "retrieval": ret.as_dict()})
    write_jsonl(out_dir / "retrieved.jsonl", ret.per_record)
    write_text(out_dir / "rag.md", "\n".join([f"# Retrieval: {meta.get('data')} over {meta.get('index')}", "",
                                               *retrieval_markdown(ret)]) + "\n")


def to_markdown(rc: RagComparison, examples: int = 10) -> str:
    cmp, ret = rc.comparison, rc.retrieval
    meta = cmp.meta
    lines = [f"# RAG + fine-tuning: {meta['model']} on {meta['data']}", "",
             f"{meta['n']} held-out questions · index {meta['index']} · passages shown to the +rag systems: top "
             f"{rc.k} by {meta.get('retrieval', rc.mode)} · greedy decoding, at most {meta['max_new_tokens']} new tokens · "
             f"{meta['precision']}", "", *retrieval_markdown(ret)]
    hit, known = rc.shown_share()
    if known:
        lines += ["", f"The source article was among the {rc.k} passages shown for {hit} of {known} questions: "
                  "the ceiling of citation_exact for the +rag systems."]
        for name in rc.by_system:
            h, n = rc.shown_share(name)
            lines.append(f"For {name}, which reranked with its own model: {h} of {n}.")
    lines += ["", "## Answers", "", "| system | " + " | ".join(RAG_METRICS) + " | seconds |",
              "|---" * (len(RAG_METRICS) + 2) + "|"]
    for s in cmp.systems:
        lines.append(f"| {s.name} | " + " | ".join(_fmt(s.summary.get(m)) for m in RAG_METRICS)
                     + f" | {s.seconds:.0f} |")
    from lorakit.evaluate.report import METRIC_HELP
    helps = {**METRIC_HELP, **HELP}
    lines += ["", "Metrics: " + "; ".join(f"**{m}** {helps[m]}" for m in RAG_METRICS) + ". The loss of a +rag "
              "system is the reference answer's loss given the passages.", "", "## Side by side", ""]
    for i, q in enumerate(cmp.questions[:examples]):
        target = ret.per_record[i].get("target") if i < len(ret.per_record) else None
        shown = ", ".join(("**" + h.label + "**") if h.label == target else h.label for h in rc.hits[i])
        lines += [f"### {i + 1}. {q}", "", f"- **reference** ({target or 'source unknown'}): {cmp.references[i]}",
                  f"- **passages shown**: {shown or 'none'}"]
        for name, (passages, _) in rc.by_system.items():
            own = ", ".join(("**" + h.label + "**") if h.label == target else h.label for h in passages[i])
            lines.append(f"- **passages shown to {name}**: {own or 'none'}")
        for s in cmp.systems:
            bad = s.per_example[i].get("unsupported") or []
            flag = f" — **unsupported figures: {', '.join(bad)}**" if bad else ""
            lines.append(f"- **{s.name}** (ROUGE-L {s.per_example[i]['rouge_l']:.2f}): {s.answers[i]}{flag}")
        lines.append("")
    if len(cmp.questions) > examples:
        lines.append(f"… {len(cmp.questions) - examples} more in eval.html, answers.jsonl and retrieved.jsonl")
    return "\n".join(lines) + "\n"


def _shown_json(hits) -> list[dict]:
    return [{"document": h.chunk.document, "article": h.chunk.article, "score": round(h.score, 4), "ranks": h.ranks}
            for h in hits]


def write_rag_reports(rc: RagComparison, out_dir: Path) -> None:
    from lorakit.evaluate.report import write_reports
    from lorakit.io import write_json, write_jsonl, write_text
    out_dir.mkdir(parents=True, exist_ok=True)
    write_reports(rc.comparison, out_dir, html_kw={
        "metrics": RAG_METRICS, "helps": HELP,
        "passages": [[(h.label, h.chunk.body) for h in hits] for hits in rc.hits]})
    cmp = rc.comparison
    hit, known = rc.shown_share()
    write_json(out_dir / "rag.json", {"meta": cmp.meta, "retrieval": rc.retrieval.as_dict(),
                                      "source_article_shown": {"questions": known, "shown": hit,
                                                               **{f"shown to {n}": rc.shown_share(n)[0]
                                                                  for n in rc.by_system}},
                                      "systems": {s.name: s.summary for s in cmp.systems}})
    write_jsonl(out_dir / "retrieved.jsonl", (
        {**(rc.retrieval.per_record[i] if i < len(rc.retrieval.per_record) else {"question": q}),
         "shown": _shown_json(rc.hits[i]),
         **({"shown_by": {n: _shown_json(v[0][i]) for n, v in rc.by_system.items()}} if rc.by_system else {})}
        for i, q in enumerate(cmp.questions)))
    write_text(out_dir / "rag.md", to_markdown(rc))
