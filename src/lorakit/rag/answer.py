"""Answering with retrieval: retrieve → a prompt of numbered passages → generate (base or adapter) → check citations.

The prompt gives the question, then the retrieved chunks as ``[1] 《document》第X条`` each followed by its text,
then asks for a short answer from the passages in the form 根据《法律名称》第X条，…… (in Chinese for a Chinese
question, in English otherwise). Of the wordings tried on the default 0.5B model this one made it cite in
every answer; asking it to "note the basis as 《法律名称》第X条" made it echo the placeholder itself. Passages longer than ``max_chars`` are cut; when the whole prompt would not fit the model's
context with room for the answer, the last passages are dropped first.

Citations in an answer are read back with `citations` (《X》第N条, and a bare 第N条 after a named document
refers to that document) and checked against the retrieved passages, so a user sees which cited articles the
model was actually shown.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from lorakit.data.build import chinese_numeral_to_int
from lorakit.rag.figures import unsupported_figures
from lorakit.rag.index import Hit, Index
from lorakit.rag.ingest import chunk_key, resolve_document

_NUM = "零〇一二三四五六七八九十百千两\\d"
_CITE = re.compile(rf"《([^《》]{{1,60}})》|第\s*([{_NUM}]+)\s*条(?:之([一二三四五六七八九十\d]+))?")


def is_chinese(text: str) -> bool:
    cjk = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    return cjk > 0 and cjk * 4 >= len(re.sub(r"\s", "", text))


def passage_block(hits: Sequence[Hit], *, max_chars: int = 600) -> str:
    """'[1] 《document》第X条\\ntext' for each hit, texts cut to ``max_chars`` characters."""
    parts = []
    for i, h in enumerate(hits, start=1):
        text = h.chunk.body if h.chunk.text.startswith(h.chunk.article) else h.chunk.text
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + "……"
        parts.append(f"[{i}] {h.label}\n{text}")
    return "\n\n".join(parts)


def rag_messages(question: str, hits: Sequence[Hit], *, max_chars: int = 600,
                 system: str | None = None) -> list[dict]:
    """The chat messages that ask ``question`` over the retrieved passages."""
    block = passage_block(hits, max_chars=max_chars)
    if not hits:
        content = question
    elif is_chinese(question):
        content = (f"问题：{question}\n\n参考资料：\n\n{block}\n\n"
                   "请根据参考资料，用一两句话回答问题，格式为：根据《法律名称》第X条，……")
    else:
        content = (f"Question: {question}\n\nReference passages:\n\n{block}\n\n"
                   "Answer the question in one or two sentences from the passages above, in the form: "
                   "According to 《document》 第X条, …")
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": content}]


NO_ANSWER_ZH = "参考资料中没有能回答这个问题的条文，我无法据此给出有依据的答复，建议查阅相关法规原文或向交通管理部门咨询。"
NO_ANSWER_EN = ("None of the reference passages answers this question, so I cannot give a grounded answer; "
                "please check the relevant regulations or ask the traffic authority.")


def no_answer(question: str) -> str:
    """What a grounded answer says when no passage shown answers the question (in the question's language)."""
    return NO_ANSWER_ZH if is_chinese(question) else NO_ANSWER_EN


def citation_start(question: str, hit: Hit) -> str:
    """How a grounded answer that rests on ``hit`` begins: 根据《document》第X条 (According to … in English)."""
    return f"根据{hit.label}" if is_chinese(question) else f"According to {hit.label}"


def answer_starts(question: str, hits: Sequence[Hit]) -> list[str]:
    """The ways a grounded answer may begin when citations are held to the passages shown: citing one of them
    (`citation_start`), or saying that none answers the question (the first words of `no_answer`). Given to
    `lorakit.evaluate.generate.AllowedStarts`, they make a cited article the model was not shown impossible at
    the start of an answer; the model still chooses which passage by its own logits."""
    if not hits:
        return []
    refusal = "参考资料中没有" if is_chinese(question) else "None of the reference passages"  # how no_answer begins
    return [citation_start(question, h) for h in hits] + [refusal]


def fit_messages(tokenizer, question: str, hits: Sequence[Hit], *, budget: int, max_chars: int = 600,
                 system: str | None = None) -> tuple[list[dict], list[Hit]]:
    """`rag_messages` cut to at most ``budget`` prompt tokens: drop the last passages, then shorten the first."""
    from lorakit.data.tokenize import render
    hits = list(hits)

    def size(msgs):
        return len(tokenizer(render(tokenizer, msgs, add_generation_prompt=True), add_special_tokens=False)
                   ["input_ids"])

    msgs = rag_messages(question, hits, max_chars=max_chars, system=system)
    while size(msgs) > budget and len(hits) > 1:
        hits.pop()
        msgs = rag_messages(question, hits, max_chars=max_chars, system=system)
    while size(msgs) > budget and hits and max_chars > 40:
        max_chars //= 2
        msgs = rag_messages(question, hits, max_chars=max_chars, system=system)
    return msgs, hits


def context_budget(model, max_new_tokens: int, cap: int = 8192) -> int:
    """Prompt tokens that leave room for the answer within the model's positions (at most ``cap``)."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None) or cap
    return max(64, min(int(n), cap) - max_new_tokens)


# ============================================================================ citations
@dataclass(frozen=True)
class Citation:
    document: str | None  # the name as written in the answer (None for a bare 第X条 before any 《…》)
    number: int
    resolved: str | None = None  # the indexed title it refers to, when one matches
    sub: int = 0  # 第133条之一 → 1: an article of its own, not 第133条

    @property
    def key(self) -> tuple[int, int]:
        return self.number, self.sub

    def label(self) -> str:
        return ((f"《{self.resolved or self.document}》" if (self.resolved or self.document) else "")
                + f"第{self.number}条" + (f"之{self.sub}" if self.sub else ""))


def citations(text: str, titles: Sequence[str] = ()) -> list[Citation]:
    """Articles an answer cites, in order, without repeats: 《X》第N条, or 第N条 after 《X》 in the same text."""
    out: list[Citation] = []
    current = None
    for m in _CITE.finditer(text or ""):
        if m.group(1) is not None:
            current = m.group(1).strip()
            continue
        try:
            number = chinese_numeral_to_int(m.group(2))
            sub = chinese_numeral_to_int(m.group(3)) if m.group(3) else 0
        except ValueError:
            continue
        c = Citation(current, number, resolve_document(current, titles) if current and titles else None, sub)
        if c not in out:
            out.append(c)
    return out


def supported(cites: Sequence[Citation], hits: Sequence[Hit]) -> list[bool]:
    """For each citation: is it one of the retrieved passages (same document when it names one, same article)?"""
    shown = {(h.chunk.document, chunk_key(h.chunk)) for h in hits}
    keys = {chunk_key(h.chunk) for h in hits}
    return [((c.resolved, c.key) in shown) if c.document else (c.key in keys) for c in cites]


# ============================================================================ asking
@dataclass
class Answer:
    question: str
    answer: str
    hits: list[Hit]
    citations: list[Citation] = field(default_factory=list)
    supported: list[bool] = field(default_factory=list)
    prompt: list[dict] = field(default_factory=list)
    unsupported: list = field(default_factory=list)  # `lorakit.rag.figures.Figure`s stated in no passage shown

    def evidence(self) -> dict:
        """What a person needs to check the answer: the passages shown, each citation and whether it was among
        them, and the figures (fines, days, points, years) that no passage shown states."""
        return {"question": self.question, "answer": self.answer,
                "passages": [{"label": h.label, "document": h.chunk.document, "article": h.chunk.article,
                              "text": h.chunk.text} for h in self.hits],
                "citations": [{"cited": c.label(), "shown": ok} for c, ok in zip(self.citations, self.supported)],
                "unsupported_figures": [f.text for f in self.unsupported]}


def load_generator(model: str, adapter: str | Path | None = None, *, console=None):
    """(model, tokenizer, precision) for generation: the base model, with the adapter attached when given."""
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import set_threads
    set_threads()
    path = resolve(model, console=console)
    tokenizer = load_tokenizer(path)
    precision = pick_precision()
    return load_model(path, precision, adapter=adapter), tokenizer, precision


def answer_with(index: Index, questions: Sequence[str], lm, tokenizer, *, precision=None, k: int = 3,
                mode: str | None = None, max_chars: int = 600, max_new_tokens: int = 256, batch_size: int = 8,
                system: str | None = None, recipe=None, retrieval_lm=None, cite_shown: bool = True) -> list[Answer]:
    """Retrieve for each question, generate answers in batches with an already loaded model, check citations.
    ``recipe`` (`lorakit.rag.retrieve.Recipe`) picks the passages; its LM levers use ``retrieval_lm`` (model,
    tokenizer, precision), by default the answering model itself. ``cite_shown``: the answer must begin by
    citing a passage shown or by saying none answers (`answer_starts`)."""
    from lorakit.evaluate.generate import generate
    from lorakit.rag.retrieve import Recipe, Retriever
    recipe = recipe or Recipe(mode=mode)
    retriever = Retriever(index, recipe, (retrieval_lm or (lm, tokenizer, precision)) if recipe.needs_model else None,
                          batch_size=batch_size)
    budget = context_budget(lm, max_new_tokens)
    prepared = [(q, *grounded_prompt(tokenizer, q, hits, budget=budget, max_chars=max_chars, system=system))
                for q, hits in zip(questions, retriever.search(questions, k))]
    starts = [answer_starts(q, shown) for q, _, shown in prepared] if cite_shown else None
    texts = generate(lm, tokenizer, [m for _, m, _ in prepared], max_new_tokens=max_new_tokens,
                     batch_size=batch_size, precision=precision, starts=starts)
    return [checked_answer(index, q, text, shown, msgs) for (q, msgs, shown), text in zip(prepared, texts)]


def grounded_prompt(tokenizer, question: str, hits: Sequence[Hit], *, budget: int, max_chars: int = 600,
                    system: str | None = None, history: Sequence[dict] = ()) -> tuple[list[dict], list[Hit]]:
    """(messages, passages kept): earlier turns of a conversation, then the question over the passages,
    cut to the prompt budget. Every grounded reply path (ask, eval, chat, server) builds its prompt here."""
    msgs, shown = fit_messages(tokenizer, question, hits, budget=budget, max_chars=max_chars, system=system)
    if history:
        msgs = [m for m in msgs if m["role"] == "system"] + [m for m in history if m["role"] != "system"] + \
               [m for m in msgs if m["role"] != "system"]
    return msgs, shown


def checked_answer(index: Index, question: str, text: str, shown: Sequence[Hit], prompt: list[dict]) -> Answer:
    """The answer with its evidence checked: citations against the passages shown, figures against their text."""
    cites = citations(text, index.titles)
    return Answer(question, text, list(shown), cites, supported(cites, shown), prompt,
                  unsupported_figures(text, [h.chunk.text for h in shown]))


def ask(index: Index, question: str, *, model: str, adapter: str | Path | None = None, k: int = 3,
        mode: str | None = None, max_chars: int = 600, max_new_tokens: int = 256, system: str | None = None,
        recipe=None, console=None, cite_shown: bool = True) -> Answer:
    """One question answered from the index by the base model or base + adapter."""
    from lorakit.errors import LorakitError
    from lorakit.rag.retrieve import Recipe
    recipe = (recipe or Recipe(mode=mode)).resolved(index)
    if not question or not question.strip():
        raise LorakitError("the question is empty", field="question")
    lm, tokenizer, precision = load_generator(model, adapter, console=console)
    return answer_with(index, [question], lm, tokenizer, precision=precision, k=k, max_chars=max_chars,
                       max_new_tokens=max_new_tokens, batch_size=1, system=system, recipe=recipe,
                       cite_shown=cite_shown)[0]
