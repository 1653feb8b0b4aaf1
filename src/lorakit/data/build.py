"""`lorakit data build`: turn domain documents into instruction data, article by article.

Reading: `chunk_articles` splits a law-style Markdown or text document into its articles (``第X条``, with
chapter ``## 第X章`` and section ``### 第X节`` headings and multi-paragraph articles, including numbered
clauses ``（一）…``); `chunk_document` falls back to heading/paragraph chunks for documents without articles.
The RAG stage reuses both.

Writing: every chunk gets rule-based question templates (deterministic for a seed), and, when a generator is
attached, question/answer pairs written by a model: a local model (preset, folder or adapter, through
`local_generator`), any OpenAI-compatible endpoint (`endpoint_generator`), or any callable
``list[str] -> list[str]`` (tests plug in fakes). Records are appended to ``OUT.partial`` as they arrive, so an
interrupted build resumes where it stopped without duplicating anything (records are keyed by document,
article, generator and index; a chunk the model gave nothing usable for is asked again). At the end the records pass through `lorakit.data.check`; records with errors or
duplicates are dropped and the checked file is written atomically to ``OUT``.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from lorakit.data.record import Conversation, Turn
from lorakit.errors import LorakitError

GenerateFn = Callable[[list[str]], list[str]]

# ============================================================================ numerals
_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}


def chinese_numeral_to_int(text: str) -> int:
    """'九十一' -> 91, '一百二十四' -> 124, '十' -> 10, '一百零三' -> 103, '12' -> 12.

    Raises ValueError for anything that is not a numeral.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    if not text or any(c not in _DIGITS and c not in _UNITS for c in text):
        raise ValueError(f"not a Chinese numeral: {text!r}")
    total, section, digit = 0, 0, None
    for c in text:
        if c in _DIGITS:
            digit = _DIGITS[c]
        else:
            unit = _UNITS[c]
            if unit == 10000:
                section = (section + (digit or 0)) * unit
                total += section
                section = 0
            else:
                section += (1 if digit is None else digit) * unit
            digit = None
    return total + section + (digit or 0)


def int_to_chinese_numeral(n: int) -> str:
    """91 -> '九十一', 124 -> '一百二十四', 10 -> '十', 103 -> '一百零三' (1 <= n < 10000)."""
    if not 0 < n < 10000:
        raise ValueError(n)
    digits = "零一二三四五六七八九"
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // value % 10
        if d:
            if zero and out:
                out += "零"
            out += ("" if (unit == "十" and d == 1 and not out) else digits[d]) + unit
            zero = False
        elif out:
            zero = True
    return out


# ============================================================================ chunking
@dataclass
class Chunk:
    """One article of a document (or one section, for documents without articles)."""

    document: str  # the document's '# title' (or the file name)
    chapter: str | None  # '第五章 交通事故处理' (None when the document has no chapters)
    article: str  # '第九十一条' (or the heading of a non-article chunk)
    number: int  # 91 (the position for non-article chunks)
    text: str  # the article as written, label included; paragraphs joined by '\n'
    section: str | None = None  # '第一节 一般规定'
    file: str | None = None
    line: int | None = None  # where the article starts in the file

    @property
    def body(self) -> str:
        """The text without its '第X条' label."""
        return self.text[len(self.article):].lstrip(" \u3000") if self.text.startswith(self.article) else self.text

    @property
    def clauses(self) -> list[str]:
        """Numbered clauses '（一）…' of the article, if it has any."""
        return [ln for ln in self.text.split("\n") if _CLAUSE.match(ln)]

    @property
    def source(self) -> dict:
        src = {"document": self.document, "article": self.article}
        if self.chapter:
            src["chapter"] = self.chapter
        return src


_NUMERAL = "零〇一二三四五六七八九十百千两"
_ARTICLE = re.compile(rf"^\s*(第([{_NUMERAL}\d]+)条(?:之[{_NUMERAL}]+)?)(?:[ \u3000\t]+|$)(.*)$")
_CHAPTER = re.compile(rf"^#{{1,6}}\s*(第[{_NUMERAL}\d]+[编章])\s*(.*)$|^(第[{_NUMERAL}\d]+[编章])[ \u3000]+(\S.*)$")
_SECTION = re.compile(rf"^#{{1,6}}\s*(第[{_NUMERAL}\d]+节)\s*(.*)$|^(第[{_NUMERAL}\d]+节)[ \u3000]+(\S.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_CLAUSE = re.compile(rf"^\s*[（(][{_NUMERAL}\d]+[）)]")


def _read_doc(path: Path) -> list[str]:
    from lorakit.data.formats import _read_text  # same checks: missing, empty, binary, not UTF-8
    return _read_text(Path(path)).replace("\r\n", "\n").split("\n")


def _title(lines: list[str], path: Path) -> str:
    for ln in lines:
        m = _HEADING.match(ln.strip())
        if m and len(m.group(1)) == 1:
            return m.group(2).strip()
    return path.stem


def _heading_name(label: str, rest: str) -> str:
    rest = re.sub(r"[ \u3000]+", "", rest or "")  # '总 则' -> '总则'
    return f"{label} {rest}".strip()


def _content_start(lines: list[str]) -> int:
    """Skip the enactment history up to the '<!-- INFO END -->' marker when there is one."""
    for i, ln in enumerate(lines):
        if ln.strip() == "<!-- INFO END -->":
            return i + 1
    return 0


def chunk_articles(path: str | Path) -> list[Chunk]:
    """The articles of a law-style document, in order.

    An article starts at a line '第X条 …' (Chinese or Arabic numerals) and runs until the next article or
    heading; its later paragraphs (often numbered clauses '（一）…') belong to it. ``chapter`` and ``section``
    come from '## 第X章 …' / '### 第X节 …' headings (bare '第X章 …' lines work too). Lines before the
    '<!-- INFO END -->' marker (enactment history) are skipped. Returns [] when there are no articles.
    """
    path = Path(path)
    lines = _read_doc(path)
    document = _title(lines, path)
    chunks: list[Chunk] = []
    chapter = section = None
    current: Chunk | None = None
    paras: list[str] = []

    def close():
        nonlocal current, paras
        if current is not None:
            current.text = "\n".join(paras)
            chunks.append(current)
        current, paras = None, []

    for lineno in range(_content_start(lines), len(lines)):
        raw = lines[lineno]
        ln = raw.strip()
        if not ln or ln.startswith("<!--"):
            continue
        m = _CHAPTER.match(ln)
        if m:
            close()
            chapter = _heading_name(m.group(1) or m.group(3), m.group(2) or m.group(4))
            section = None
            continue
        m = _SECTION.match(ln)
        if m:
            close()
            section = _heading_name(m.group(1) or m.group(3), m.group(2) or m.group(4))
            continue
        if _HEADING.match(ln):  # another heading (a part title, '## 一、…'): ends the article
            close()
            if not ln.startswith("# "):
                chapter, section = _HEADING.match(ln).group(2).strip(), None
            continue
        m = _ARTICLE.match(ln)
        if m:
            close()
            label = m.group(1)
            try:
                number = chinese_numeral_to_int(m.group(2))
            except ValueError:
                number = 0
            current = Chunk(document, chapter, label, number, "", section, str(path), lineno + 1)
            paras = [ln]
            continue
        if current is not None:
            paras.append(ln)
    close()
    return chunks


def chunk_document(path: str | Path, *, max_chars: int = 600) -> list[Chunk]:
    """Articles when the document has them; otherwise chunks of paragraphs under each heading.

    A non-article chunk is named after its nearest heading (``article``) and numbered by position.
    """
    articles = chunk_articles(path)
    if articles:
        return articles
    path = Path(path)
    lines = _read_doc(path)
    document = _title(lines, path)
    chunks: list[Chunk] = []
    heading, buf, start = None, [], None

    def close():
        nonlocal buf, start
        if buf:
            name = heading or document
            chunks.append(Chunk(document, None, name, len(chunks) + 1, "\n".join(buf), None, str(path), start))
        buf, start = [], None

    for lineno in range(_content_start(lines), len(lines)):
        ln = lines[lineno].strip()
        if not ln or ln.startswith("<!--"):
            continue
        m = _HEADING.match(ln)
        if m:
            close()
            if len(m.group(1)) > 1 or chunks or buf:
                heading = m.group(2).strip()
            continue
        if buf and sum(len(b) for b in buf) + len(ln) > max_chars:
            close()
        if start is None:
            start = lineno + 1
        buf.append(ln)
    close()
    return chunks


# ============================================================================ templates
_ZH_TEMPLATES = (
    "《{doc}》{article}是怎么规定的？",
    "{article}在《{doc}》里讲的是什么内容？",
    "请介绍一下《{doc}》{article}的规定。",
    "根据《{doc}》，{article}的具体内容是什么？",
)
_ZH_CHAPTER = "《{doc}》“{chapter}”一章中，{article}规定了什么？"
_ZH_CLAUSES = "《{doc}》{article}列举了哪些情形？"
_ZH_PENALTY = "违反《{doc}》{article}的情形会受到什么处理？"
_ZH_SECTION = "《{doc}》中“{article}”这部分讲了什么？"
_EN_TEMPLATES = (
    "What does {article} of {doc} say?",
    "Summarise {article} of {doc}.",
)
_PENALTY_WORDS = ("罚款", "吊销", "拘留", "记分", "有期徒刑", "处罚", "暂扣")


def _is_chinese(text: str) -> bool:
    cjk = sum(1 for c in text[:400] if "\u4e00" <= c <= "\u9fff")
    return cjk * 3 >= len(text[:400])


def _rng(seed: int, *parts) -> random.Random:
    key = "\x1f".join(str(p) for p in (seed, *parts))
    return random.Random(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little"))


def template_pairs(chunk: Chunk, n: int = 2, *, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``n`` rule-based (question, answer) pairs for a chunk; the same seed gives the same pairs.

    The answer quotes the article and names its source, so a model trained on it learns to cite.
    """
    if n <= 0 or not chunk.body.strip():
        return []
    rng = _rng(seed, chunk.document, chunk.article, chunk.number)
    is_article = bool(_ARTICLE.match(chunk.text.split("\n", 1)[0]))
    zh = _is_chinese(chunk.text)
    fmt = {"doc": chunk.document, "article": chunk.article, "chapter": (chunk.chapter or "").split(" ", 1)[-1]}
    if zh:
        answer = (f"根据《{chunk.document}》{chunk.article}的规定：{chunk.body}" if is_article else chunk.text)
        special = []
        if not is_article:
            pool = [_ZH_SECTION]
        else:
            pool = list(_ZH_TEMPLATES)
            if chunk.chapter and chunk.chapter.startswith("第"):
                pool.append(_ZH_CHAPTER)
            if len(chunk.clauses) >= 2:
                special.append(_ZH_CLAUSES)
            if any(w in chunk.body for w in _PENALTY_WORDS):
                special.append(_ZH_PENALTY)
    else:
        answer = (f"{chunk.article} of {chunk.document} says: {chunk.body}" if is_article else chunk.text)
        pool, special = list(_EN_TEMPLATES), []
        if not is_article:
            pool = ["What does the part '{article}' of {doc} say?"]
    rng.shuffle(pool)
    chosen = (special + pool)[:n] if special else pool[:n]
    return [(t.format(**fmt), answer) for t in chosen]


# ============================================================================ model-assisted generation
def generation_prompt(chunk: Chunk, n: int) -> str:
    """What the model is asked for one chunk: ``n`` grounded question/answer pairs as a JSON array."""
    if _is_chinese(chunk.text):
        return (f"下面是《{chunk.document}》{chunk.article}的原文：\n\n{chunk.text}\n\n"
                f"请根据这条规定，写出{n}个普通人在生活中可能会问的问题，并给出准确、完整的回答。"
                f"回答只能依据上面的原文，并在回答中注明出处（《{chunk.document}》{chunk.article}）。"
                '只输出一个 JSON 数组，格式为：[{"question": "……", "answer": "……"}]')
    return (f"Here is {chunk.article} of {chunk.document}:\n\n{chunk.text}\n\n"
            f"Write {n} questions a member of the public might ask about it, each with an accurate, complete "
            f"answer based only on the text above that cites {chunk.article}. Output only a JSON array: "
            '[{"question": "...", "answer": "..."}]')


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_QA_LINE = re.compile(r"^\s*(?:\d+[.、)]\s*)?(?:问|问题|Q|Question)\s*[:：]\s*(.+?)\s*$", re.I)
_A_LINE = re.compile(r"^\s*(?:答|回答|A|Answer)\s*[:：]\s*(.+?)\s*$", re.I)


def parse_pairs(completion: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from a model's reply: a JSON array (fenced or not), or 问：/答： lines."""
    text = completion.strip()
    m = _FENCE.search(text)
    candidates = [m.group(1)] if m else []
    lo, hi = text.find("["), text.rfind("]")
    if lo >= 0 and hi > lo:
        candidates.append(text[lo:hi + 1])
    for cand in candidates:
        try:
            data = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            data = [data]
        if isinstance(data, list):
            out = []
            for item in data:
                if isinstance(item, dict):
                    q = item.get("question") or item.get("q") or item.get("问题") or item.get("instruction")
                    a = item.get("answer") or item.get("a") or item.get("答案") or item.get("output")
                    if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                        out.append((q.strip(), a.strip()))
            if out:
                return out
    out, q = [], None
    for ln in text.split("\n"):
        mq, ma = _QA_LINE.match(ln), _A_LINE.match(ln)
        if mq:
            q = mq.group(1)
        elif ma and q:
            out.append((q, ma.group(1)))
            q = None
    return out


_CITED = re.compile(rf"第([{_NUMERAL}\d]+)条")


def cites_missing_article(answer: str, numbers: set[int]) -> str | None:
    """The first '第X条' the answer cites that the document does not have (None if all exist)."""
    for m in _CITED.finditer(answer):
        try:
            if chinese_numeral_to_int(m.group(1)) not in numbers:
                return m.group(0)
        except ValueError:
            continue
    return None


def endpoint_generator(url: str, *, model: str | None = None, api_key: str | None = None,
                       temperature: float = 0.7, max_tokens: int = 1024, seed: int = 0, timeout: float = 120.0,
                       concurrency: int = 4, system: str | None = None) -> GenerateFn:
    """A generator that POSTs each prompt to ``{url}/chat/completions`` (any OpenAI-compatible server).

    ``url`` is the API base (e.g. http://127.0.0.1:8000/v1). Requests in a batch run concurrently.
    """
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        base = base[: -len("/chat/completions")]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(timeout=timeout, headers=headers)

    def one(prompt: str) -> str:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        body = {"model": model or "default", "messages": msgs, "temperature": temperature,
                "max_tokens": max_tokens, "seed": seed}
        try:
            r = client.post(base + "/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise LorakitError(f"cannot reach the endpoint ({e.__class__.__name__}: {e})", field="endpoint",
                               hint=f"Is the server running at {base}?") from None
        if r.status_code != 200:
            raise LorakitError(f"the endpoint answered HTTP {r.status_code}: {r.text[:200]}", field="endpoint",
                               hint="Check the URL (the API base, e.g. http://127.0.0.1:8000/v1), model and key")
        try:
            return r.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise LorakitError("the endpoint's reply is not an OpenAI chat completion", field="endpoint") from None

    def generate(prompts: list[str]) -> list[str]:
        if len(prompts) == 1 or concurrency <= 1:
            return [one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(concurrency, len(prompts))) as pool:
            return list(pool.map(one, prompts))

    generate.name = model or base  # type: ignore[attr-defined]
    return generate


def local_generator(model: str, *, adapter: str | None = None, max_new_tokens: int = 768, seed: int = 0,
                    system: str | None = None) -> GenerateFn:
    """A generator running a local model (preset name, HF folder or .gguf; optional LoRA adapter).

    Greedy decoding, so the same seed and model give the same pairs.
    """
    import torch

    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.chat import stop_ids

    path = resolve(model)
    tok = load_tokenizer(path)
    tok.padding_side = "left"
    lm = load_model(path, pick_precision(), adapter=adapter)
    stops = stop_ids(tok)

    def generate(prompts: list[str]) -> list[str]:
        torch.manual_seed(seed)
        texts = [tok.apply_chat_template(([{"role": "system", "content": system}] if system else []) +
                                         [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
        with torch.no_grad():
            out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=tok.pad_token_id)
        return [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]

    generate.name = str(model) + (f"+{adapter}" if adapter else "")  # type: ignore[attr-defined]
    return generate


# ============================================================================ the build, top to bottom
@dataclass
class BuildResult:
    path: Path
    records: int
    documents: int
    chunks: int
    template_records: int
    model_records: int
    resumed: int  # records found in OUT.partial from an earlier run
    failed_chunks: list[str] = field(default_factory=list)  # chunks the model gave nothing usable for
    rejected: dict[str, int] = field(default_factory=dict)  # generated pairs dropped, by reason
    dropped: dict[str, int] = field(default_factory=dict)  # records dropped by the final check, by reason
    report: object | None = None  # the check Report of the final records


def _key(conv: Conversation) -> tuple:
    s = conv.source
    return (s.get("document"), s.get("article"), conv.meta.get("generator"), s.get("index"))


def _load_partial(partial: Path) -> list[Conversation]:
    """Records of an earlier, interrupted run; a half-written last line is ignored."""
    if not partial.exists() or partial.stat().st_size == 0:
        return []
    raw = partial.read_bytes()
    if not raw.endswith(b"\n"):  # a line cut by a hard kill: drop it so new records start on a fresh line
        with open(partial, "r+b") as f:
            f.truncate(raw.rfind(b"\n") + 1)
        raw = raw[: raw.rfind(b"\n") + 1]
    out = []
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Conversation.from_messages(row["messages"], source=row.get("source", {}),
                                                  meta={k: v for k, v in row.items() if k not in ("messages", "source")}))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def build(docs: Sequence[str | Path], out: str | Path, *, templates: int = 2, generate_fn: GenerateFn | None = None,
          pairs: int = 3, seed: int = 0, system: str | None = None, batch_size: int = 8,
          on_progress: Callable[[int, int, str], None] | None = None) -> BuildResult:
    """Build instruction data from documents into ``out`` (canonical messages JSONL), resumably.

    ``templates`` rule-based pairs per chunk; with ``generate_fn`` also up to ``pairs`` model-written pairs
    per chunk. ``on_progress(done, total, label)`` is called after each batch of chunks.
    """
    from lorakit.data.check import check, fix
    from lorakit.data.formats import messages_row

    out = Path(out)
    if not docs:
        raise LorakitError("no documents given", field="docs")
    chunks: list[Chunk] = []
    for d in docs:
        d = Path(d)
        found = chunk_document(d)
        if not found:
            raise LorakitError("no text found in this document", file=d)
        chunks += found
    numbers = {}
    for c in chunks:
        numbers.setdefault(c.document, set()).add(c.number)

    partial = out.with_name(out.name + ".partial")
    earlier = _load_partial(partial)
    done = {_key(r) for r in earlier}
    done_jobs = {(k[0], k[1], k[2]) for k in done}
    gen_name = getattr(generate_fn, "name", "model") if generate_fn else None
    result = BuildResult(out, 0, len(docs), len(chunks), 0, 0, len(earlier))
    out.parent.mkdir(parents=True, exist_ok=True)

    def append(f, convs: list[Conversation]):
        """One write per chunk, so a chunk's records land together."""
        if convs:
            f.write("".join(json.dumps(messages_row(c), ensure_ascii=False) + "\n" for c in convs))

    def record(chunk: Chunk, q: str, a: str, index: int, generator: str) -> Conversation:
        src = {**chunk.source, "index": index}
        meta = {"generator": generator} if generator == "template" else {"generator": generator, "model": gen_name}
        return Conversation([Turn("user", q), Turn("assistant", a)], system=system, source=src, meta=meta)

    with open(partial, "a", encoding="utf-8") as f:
        # 1. rule-based templates: instant and deterministic
        for chunk in chunks:
            if (chunk.document, chunk.article, "template") in done_jobs:
                continue
            append(f, [record(chunk, q, a, i, "template")
                       for i, (q, a) in enumerate(template_pairs(chunk, templates, seed=seed))])
        f.flush()
        # 2. model-written pairs, a batch of chunks at a time, flushed as they come
        if generate_fn is not None:
            todo = [c for c in chunks if (c.document, c.article, "model") not in done_jobs]
            total, finished = len(chunks), len(chunks) - len(todo)
            if on_progress:
                on_progress(finished, total, "resuming" if finished else "starting")
            for b in range(0, len(todo), batch_size):
                batch = todo[b:b + batch_size]
                replies = generate_fn([generation_prompt(c, pairs) for c in batch])
                for chunk, reply in zip(batch, replies):
                    convs = []
                    for q, a in parse_pairs(reply or "")[:pairs]:
                        if cites_missing_article(a, numbers[chunk.document]):
                            why = "cites an article the document does not have"
                            result.rejected[why] = result.rejected.get(why, 0) + 1
                            continue
                        convs.append(record(chunk, q, a, len(convs), "model"))
                    append(f, convs)
                    if not convs:
                        result.failed_chunks.append(f"{chunk.document} {chunk.article}")
                f.flush()
                finished += len(batch)
                if on_progress:
                    on_progress(finished, total, f"{batch[-1].document} {batch[-1].article}")

    # 3. check everything, drop errors and exact duplicates, write the final file atomically (several questions
    #    sharing one article's answer are near duplicates on purpose: they stay, and `data split` keeps them together)
    report = check(partial, fmt="messages")
    res = fix(report, out, fmt="messages", drop=("role_order", "empty", "duplicate", "no_supervised"))
    kept = _load_partial(out)
    result.records = res.kept
    result.dropped = res.dropped
    result.template_records = sum(1 for r in kept if r.meta.get("generator") == "template")
    result.model_records = result.records - result.template_records
    result.report = check(out, fmt="messages")
    partial.unlink()
    return result


def iter_chunks(docs: Iterable[str | Path]) -> Iterable[Chunk]:
    """Every chunk of every document, in order (what `build` and the RAG stage read)."""
    for d in docs:
        yield from chunk_document(d)
