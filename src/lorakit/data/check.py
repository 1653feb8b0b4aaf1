"""`lorakit data check`: find what makes fine-tuning fail quietly, before any GPU hour is spent.

One function, `check`, reads a dataset (any format), runs every check and returns a `Report`: a list of
`Finding`s (each with its file, line, code and severity) plus statistics for the summary and the histograms.
Errors are problems that break training or evaluation (unparseable records, wrong role order, empty fields,
nothing to learn, eval items in the training data); warnings deserve a look (duplicates, truncation, PII,
language and width mix). `fix` writes a cleaned copy and never touches the input.

Checks, in order: parse errors, role order, empty fields, exact and near duplicates (MinHash over
character n-grams; questions about the same source article may overlap), train/eval leakage (exact and near), token length against the cut-off under the model's
own chat template (truncated answers, zero supervised tokens), answers that repeat the question, PII
(mainland mobile numbers, resident ID numbers with a valid check digit, emails, licence plates), question and
answer in different languages, and full-width/half-width inconsistencies. Preference and KTO records are
checked as the conversation of their prompt and (chosen) reply, plus what only they can get wrong: a chosen reply
the same as the rejected one, an empty reply, and labels all on one side. Tool-calling records: calls that do not
parse as JSON and calls to a tool the record does not declare.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lorakit.data import minhash
from lorakit.data.formats import parse_records, write_records
from lorakit.data.preference import label_balance, preference_findings
from lorakit.data.record import Conversation, Preference, Turn, as_conversation, record_kind, role_order_problem
from lorakit.data.tools import tool_call_problem
from lorakit.errors import LorakitError

# code -> (severity, what it means); the order is the order of the summary table
CHECKS: dict[str, tuple[str, str]] = {
    "parse": ("error", "records that do not parse"),
    "role_order": ("error", "wrong role order"),
    "empty": ("error", "empty or whitespace-only fields"),
    "same_pair": ("error", "preference pairs whose chosen and rejected replies are the same"),
    "tool_call": ("error", "tool calls that do not parse as JSON or call an undeclared tool"),
    "label_balance": ("warning", "KTO labels far out of balance"),
    "duplicate": ("warning", "exact duplicates"),
    "near_duplicate": ("warning", "near duplicates"),
    "leak": ("error", "eval items that are also in the training data"),
    "near_leak": ("warning", "eval items nearly the same as training data"),
    "truncated": ("warning", "answers cut by the cut-off"),
    "no_supervised": ("error", "no supervised tokens (nothing to learn)"),
    "repeats_question": ("warning", "answers that repeat the question"),
    "pii": ("warning", "personal data (phone, ID number, email, plate)"),
    "language_mix": ("warning", "question and answer in different languages"),
    "width": ("warning", "full-width/half-width inconsistencies"),
}

DEFAULT_CUTOFF = 2048  # LLaMA-Factory's cutoff_len default; used when --model is given without --cutoff


@dataclass
class Finding:
    code: str
    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None
    index: int | None = None  # position among the parsed records (None for parse errors)
    related: dict[str, Any] | None = None  # the other record: {"file": …, "line": …}

    @property
    def severity(self) -> str:
        return CHECKS[self.code][0]

    def where(self) -> str:
        w = (self.file or "") + (f":{self.line}" if self.line is not None else "")
        return w + (f" ({self.field})" if self.field else "")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["severity"] = self.severity
        return d


@dataclass
class Report:
    path: str
    fmt: str
    records: list[Conversation]
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    eval_path: str | None = None
    model: str | None = None
    cutoff: int | None = None
    char_lengths: list[int] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when no errors were found (warnings do not fail a check)."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        c = Counter(f.code for f in self.findings)
        return {code: c.get(code, 0) for code in CHECKS}

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "format": self.fmt, "kind": self.stats.get("kind"), "eval_file": self.eval_path, "model": self.model,
                "cutoff": self.cutoff, "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
                "counts": self.counts(), "stats": self.stats,
                "checks": {code: {"severity": s, "description": d} for code, (s, d) in CHECKS.items()},
                "findings": [f.to_dict() for f in self.findings]}


# ============================================================================ the check, top to bottom
def check(path: str | Path, *, fmt: str | None = None, columns: dict | None = None,
          tokenizer=None, model: str | None = None, cutoff: int | None = None,
          eval_path: str | Path | None = None, near_threshold: float = 0.8, ngram: int = 3,
          progress: Callable[[str], None] | None = None, dataset: str | None = None) -> Report:
    """Run every check on a dataset file and return the report (the input is only read).

    ``tokenizer`` (with a chat template) enables the token-length and supervised-token checks; ``model`` is
    only its name for the report. ``cutoff`` defaults to 2048 when a tokenizer is given. ``dataset`` picks an
    entry of a dataset_info.json that registers several.
    """
    say = progress or (lambda msg: None)
    say("reading")
    parsed = parse_records(path, fmt, columns=columns, dataset=dataset)
    records = parsed.records
    views = [as_conversation(r) for r in records]  # what the SFT-style checks and the token count look at
    if tokenizer is not None and cutoff is None:
        cutoff = DEFAULT_CUTOFF
    if cutoff is not None and tokenizer is None:
        raise LorakitError("--cutoff needs --model: token lengths depend on the model's tokenizer and chat template",
                           field="cutoff")
    report = Report(path=str(path), fmt=parsed.fmt, records=records, eval_path=str(eval_path) if eval_path else None,
                    model=model, cutoff=cutoff)
    add = report.findings.append

    for e in parsed.errors:
        add(Finding("parse", e.message + (f" ({e.hint[0].lower() + e.hint[1:]})" if e.hint else ""), e.file, e.line, e.field))

    say("checking records")
    broken = np.zeros(len(records), bool)  # records later checks should skip
    texts = [_record_text(r) for r in records]
    for i, r in enumerate(records):
        for f in _record_findings(views[i], i) + _kind_findings(r, views[i], i):
            add(f)
            if f.code in ("role_order", "empty", "tool_call"):
                broken[i] = True
    balance = label_balance(records)
    if balance and min(balance.values()) * 4 < max(balance.values()):
        add(Finding("label_balance", f"{balance['desirable']} desirable and {balance['undesirable']} undesirable "
                    "replies: KTO learns from both sides (its paper keeps them within about 4:1; set "
                    "pref.desirable_weight / undesirable_weight to balance)", str(path)))

    say("finding duplicates")
    norm = [minhash.normalize(t) for t in texts]
    exact_of = _exact_duplicates(records)
    for i, j in exact_of.items():
        add(_pair_finding("duplicate", records, i, j, "the same as line {line}"))
    near = minhash.near_duplicates(norm, threshold=near_threshold, n=ngram, normalized=True, first_only=True,
                                   skip=np.array([i in exact_of for i in range(len(records))], bool),
                                   same_group=_article_groups(records)) if records else []
    seen = set(exact_of)
    for i, j, sim in near:
        if j not in seen:
            seen.add(j)
            add(_pair_finding("near_duplicate", records, j, i, f"nearly the same as line {{line}} (similarity {sim:.2f})"))

    if eval_path is not None:
        say("looking for leakage")
        for f in _leakage(views, norm, Path(eval_path), columns, near_threshold, ngram):
            add(f)

    if tokenizer is not None:
        say("counting tokens")
        report.token_lengths = _token_findings(views, broken, tokenizer, cutoff, report)

    report.char_lengths = [len(t) for t in texts]
    report.stats = _stats(report, parsed.lines)
    report.findings.sort(key=lambda f: (f.file != report.path, f.file or "", f.line or 0, list(CHECKS).index(f.code)))
    return report


# ============================================================================ per-record checks
def _record_text(r) -> str:
    """What duplicate and leakage search compare: every turn's words (the shared system prompt left out); for a
    pair both replies, so that one prompt with several rejected replies is not a duplicate."""
    return "\n".join(t.content for t in r.turns) if isinstance(r, Conversation) else r.text()


def _kind_findings(r, view: Conversation, i: int) -> list[Finding]:
    """Findings only preference, KTO and tool-calling records can have."""
    file, line = view.source.get("file"), view.source.get("line")
    out = [Finding(code, msg, file, line, fld, i) for code, msg, fld in preference_findings(r)]
    if isinstance(r, Preference):
        problem = role_order_problem(r.conversation("rejected"))
        if problem and not role_order_problem(view):
            out.append(Finding("role_order", problem, file, line, "rejected", i))
    problem = tool_call_problem(view) or (tool_call_problem(r.conversation("rejected"))
                                          if isinstance(r, Preference) else None)
    if problem:
        out.append(Finding("tool_call", problem, file, line, "tool_calls", i))
    return out


def _fields(r: Conversation) -> list[tuple[str, str]]:
    out = [("system", r.system)] if r.system is not None else []
    counts: Counter = Counter()
    for t in r.turns:
        counts[t.role] += 1
        if not (t.tool_calls and not t.content):  # a turn that only calls a tool has no text, rightly
            out.append((f"{t.role} turn {counts[t.role]}", t.content))
    return out


def _record_findings(r: Conversation, i: int) -> list[Finding]:
    file, line = r.source.get("file"), r.source.get("line")
    found: list[Finding] = []

    def add(code: str, msg: str, fld: str | None = None):
        found.append(Finding(code, msg, file, line, fld, i))

    problem = role_order_problem(r)
    if problem:
        add("role_order", problem)
    for name, text in _fields(r):
        if not text.strip():
            add("empty", "empty" if not text else "whitespace only", name)
    for name, text in _fields(r):
        for kind, value in find_pii(text):
            add("pii", f"{kind} '{value}'", name)
        w = width_problem(text)
        if w:
            add("width", w, name)
    is_chat = any(t.role == "user" for t in r.turns)
    if is_chat and not problem:
        q, a = r.prompt, r.answer
        if q.strip() and a.strip() and repeats_question(q, a):
            add("repeats_question", "the answer repeats the question instead of answering it",
                f"assistant turn {sum(t.role == 'assistant' for t in r.turns)}")
        lq, la = language(q), language(a)
        if lq and la and lq != la:
            add("language_mix", f"the question is {_LANG_NAME[lq]} but the answer is {_LANG_NAME[la]}")
    return found


def _article_groups(records: list[Conversation]) -> np.ndarray:
    """A group id per record with the same source document and article (-1 without one).

    Several questions about one article (what `data build` writes) overlap on purpose; they are not reported
    as near duplicates, and `data split` keeps them on one side.
    """
    ids: dict[tuple, int] = {}
    out = np.full(len(records), -1, np.int64)
    for i, r in enumerate(records):
        doc, art = r.source.get("document"), r.source.get("article")
        if doc is not None and art is not None:
            out[i] = ids.setdefault((doc, art), len(ids))
    return out


def _exact_duplicates(records: list[Conversation]) -> dict[int, int]:
    """Index of each duplicate -> index of its first occurrence (same system and turns after trimming)."""
    first: dict[bytes, int] = {}
    out: dict[int, int] = {}
    for i, r in enumerate(records):
        key = "\x1e".join([(r.system or "").strip(), _record_text(r).strip()]) if not isinstance(r, Conversation) else \
            "\x1e".join([(r.system or "").strip()] + [t.role + "\x1f" + t.content.strip() for t in r.turns])
        h = hashlib.blake2b(key.encode(), digest_size=16).digest()
        if h in first:
            out[i] = first[h]
        else:
            first[h] = i
    return out


def _pair_finding(code: str, records: list[Conversation], i: int, j: int, template: str) -> Finding:
    r, other = records[i], records[j]
    msg = template.format(line=other.source.get("line"))
    return Finding(code, msg, r.source.get("file"), r.source.get("line"), None, i,
                   {"file": other.source.get("file"), "line": other.source.get("line")})


def _leakage(records, norm, eval_path: Path, columns, threshold, ngram) -> list[Finding]:
    parsed = parse_records(eval_path, None, columns=columns)
    out = [Finding("parse", e.message, e.file, e.line, e.field) for e in parsed.errors]
    ev = parsed.records
    ev_norm = [minhash.normalize(_record_text(r)) for r in ev]
    ev_prompt = {}
    for k, r in enumerate(ev):
        p = minhash.normalize(r.prompt) if any(t.role == "user" for t in r.turns) else ""
        if p:
            ev_prompt.setdefault(p, k)
    ev_text = {}
    for k, t in enumerate(ev_norm):
        if t:
            ev_text.setdefault(t, k)
    leaked: set[int] = set()
    for i, r in enumerate(records):
        k = ev_text.get(norm[i]) if norm[i] else None
        if k is None and any(t.role == "user" for t in r.turns):
            p = minhash.normalize(r.prompt)
            k = ev_prompt.get(p) if p else None
        if k is not None:
            leaked.add(i)
            out.append(Finding("leak", f"also in the eval set at {ev[k].source.get('file')}:{ev[k].source.get('line')}",
                               r.source.get("file"), r.source.get("line"), None, i,
                               {"file": ev[k].source.get("file"), "line": ev[k].source.get("line")}))
    side = np.concatenate([np.zeros(len(norm), np.int8), np.ones(len(ev_norm), np.int8)])
    skip = np.zeros(len(side), bool)
    skip[list(leaked)] = True
    pairs = minhash.near_duplicates(norm + ev_norm, threshold=threshold, n=ngram, normalized=True, side=side, skip=skip)
    done = set()
    for i, j, sim in pairs:
        ti, ej = (i, j - len(norm)) if i < len(norm) else (j, i - len(norm))
        if ti in done:
            continue
        done.add(ti)
        r, e = records[ti], ev[ej]
        out.append(Finding("near_leak", f"nearly the same as eval item {e.source.get('file')}:{e.source.get('line')} "
                           f"(similarity {sim:.2f})", r.source.get("file"), r.source.get("line"), None, ti,
                           {"file": e.source.get("file"), "line": e.source.get("line")}))
    return out


# ---------------------------------------------------------------------------- tokens
def _token_findings(records, broken, tokenizer, cutoff: int, report: Report, batch: int = 512) -> list[int]:
    """Token length of every record under the chat template; truncation and supervised-token findings."""
    from lorakit.data.tokenize import assistant_char_spans, encoding_ranges, token_ranges

    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    lengths = [0] * len(records)
    todo = [i for i in range(len(records)) if not broken[i]]
    for b in range(0, len(todo), batch):
        idx = todo[b:b + batch]
        rendered = [assistant_char_spans(tokenizer, records[i].messages(), tools=records[i].tools) for i in idx]
        texts = [t for t, _ in rendered]
        if backend is not None:  # the Rust encodings directly: no per-token Python objects
            encodings = backend.encode_batch(texts, add_special_tokens=False)
        else:
            encodings = [None] * len(texts)
            offsets_all = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for k, (i, (text, spans)) in enumerate(zip(idx, rendered)):
            enc = encodings[k]
            ranges = encoding_ranges(enc, spans, len(text)) if enc is not None else None
            if ranges is None:
                offsets = enc.offsets if enc is not None else offsets_all[k]
                ranges = token_ranges([a for a, _ in offsets], spans)
                n = len(offsets)
            else:
                n = len(enc)
            lengths[i] = n
            supervised = sum(hi - lo for lo, hi in ranges)
            kept = sum(max(0, min(hi, cutoff) - lo) for lo, hi in ranges)
            r = records[i]
            where = (r.source.get("file"), r.source.get("line"))
            if kept == 0:
                why = (f"the prompt alone is {ranges[0][0] if ranges else n} tokens, the cut-off is {cutoff}"
                       if supervised else "the chat template leaves no assistant tokens to train on")
                report.findings.append(Finding("no_supervised", f"0 supervised tokens: {why}", *where, None, i))
            elif kept < supervised:
                report.findings.append(Finding(
                    "truncated", f"{n} tokens with the chat template, the cut-off is {cutoff}: "
                    f"{supervised - kept} of {supervised} answer tokens are cut (the model never learns to stop)",
                    *where, None, i))
    return lengths


# ---------------------------------------------------------------------------- content rules
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RE_ID = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                    r"(?![0-9A-Za-z])")
_RE_PHONE = re.compile(r"(?<![\d+])(?:\+?86[- ]?)?1[3-9]\d(?:\d{8}|[- ]\d{4}[- ]\d{4})(?!\d)")
_RE_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_HAS_NUMBER = re.compile(r"\d{4}")
_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_RE_PLATE = re.compile(rf"[{_PROVINCES}][A-HJ-NP-Z][·•\s]?(?=[A-HJ-NP-Z0-9]{{0,5}}\d)[A-HJ-NP-Z0-9]{{4,5}}"
                       r"[A-HJ-NP-Z0-9挂学警]?(?![A-Za-z0-9])")


def id_check_digit_ok(number: str) -> bool:
    """The ISO 7064 MOD 11-2 check digit of an 18-digit mainland resident ID number."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == number[17].upper()


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, value) for each mobile number, valid resident ID number, email address and licence plate."""
    if not text:
        return []
    found: list[tuple[str, str]] = []
    if _HAS_NUMBER.search(text):
        ids = [m for m in _RE_ID.finditer(text) if id_check_digit_ok(m.group())]
        found += [("ID number", m.group()) for m in ids]
        taken = [(m.start(), m.end()) for m in ids]
        for m in _RE_PHONE.finditer(text):
            if not any(a <= m.start() < b for a, b in taken):
                found.append(("mobile number", m.group()))
    if not text.isascii():
        found += [("licence plate", m.group()) for m in _RE_PLATE.finditer(text)]
    if "@" in text:
        found += [("email", m.group()) for m in _RE_EMAIL.finditer(text)]
    return found


def mask_pii(text: str) -> str:
    """Mask what `find_pii` finds, keeping enough to read naturally (138****5678, 京A·****5)."""
    def mid(s: str, keep_l: int, keep_r: int) -> str:
        return s[:keep_l] + "*" * max(0, len(s) - keep_l - keep_r) + (s[-keep_r:] if keep_r else "")

    text = _RE_ID.sub(lambda m: mid(m.group(), 6, 4) if id_check_digit_ok(m.group()) else m.group(), text)
    text = _RE_PHONE.sub(lambda m: mid(m.group(), len(m.group()) - 8, 4), text)
    text = _RE_EMAIL.sub(lambda m: m.group()[0] + "***@" + m.group().split("@", 1)[1], text)
    text = _RE_PLATE.sub(lambda m: m.group()[:2] + "*" * (len(m.group()) - 3) + m.group()[-1], text)
    return text


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
_LANG_NAME = {"zh": "Chinese", "en": "English"}


def language(text: str) -> str | None:
    """'zh', 'en' or None (too little text to say). A Chinese character counts as much as 3 Latin letters."""
    cjk = 0 if text.isascii() else len(_CJK.findall(text))
    if cjk * 3 >= 2 * (len(text) - cjk) and cjk * 3 >= 12:
        return "zh"  # even if every other character were a Latin letter
    latin = len(_LATIN.findall(text))
    if cjk * 3 + latin < 12:
        return None
    if cjk * 3 >= 2 * latin:
        return "zh"
    if latin >= 2 * cjk * 3:
        return "en"
    return None


_FULLWIDTH_ALNUM = re.compile(r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]+")
_HALF_PUNCT_IN_ZH = re.compile(r"(?<=[\u4e00-\u9fff])[,;:?!](?=[\u4e00-\u9fff]|\s*$)")
_FULL_PUNCT_IN_EN = re.compile(r"(?<=[A-Za-z0-9])[，。；：？！](?=\s|[A-Za-z]|$)")


def width_problem(text: str) -> str | None:
    """Full-width letters/digits, or punctuation of the other width than the surrounding language."""
    if text.isascii():
        return None
    m = _FULLWIDTH_ALNUM.search(text)
    if m:
        return f"full-width letters or digits '{m.group()}' (use half-width '{minhash.normalize(m.group())}')"
    m = _HALF_PUNCT_IN_ZH.search(text)
    if m:
        return f"half-width '{m.group()}' in Chinese text: …{text[max(0, m.start() - 6):m.end() + 4]}…"
    if not _CJK.search(text):
        m = _FULL_PUNCT_IN_EN.search(text)
        if m:
            return f"full-width '{m.group()}' in English text: …{text[max(0, m.start() - 8):m.end() + 4]}…"
    return None


def _trigrams(s: str) -> set[str]:
    return {s[k:k + 3] for k in range(max(1, len(s) - 2))}


def repeats_question(question: str, answer: str) -> bool:
    """True when the answer is the question again (or little more than it)."""
    if len(answer) > 2 * len(question) + 10 or len(question) > 2 * len(answer) + 10:
        return False  # too different in length to be the same text (normalising removes far less than half)
    q, a = minhash.normalize(question), minhash.normalize(answer)
    if not q or not a:
        return False
    if a == q or (q in a and len(a) <= len(q) * 1.2 + 2):
        return True
    tq, ta = _trigrams(q), _trigrams(a)
    return len(tq & ta) / len(tq | ta) >= 0.7


# ============================================================================ statistics
def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": int(a.max()), "mean": round(float(a.mean()), 1)}


def _stats(report: Report, attempted: int) -> dict[str, Any]:
    kinds = Counter(record_kind(r) for r in report.records)
    recs = [as_conversation(r) for r in report.records]
    langs = Counter((language(r.text()) or "other") for r in recs)
    turns = Counter(len(r.turns) for r in recs)
    stats: dict[str, Any] = {
        "kind": kinds.most_common(1)[0][0] if kinds else "sft",
        "records": attempted,
        "parsed": len(recs),
        "with_system": sum(1 for r in recs if r.system),
        "multi_turn": sum(1 for r in recs if sum(t.role == "user" for t in r.turns) > 1),
        "plain_text": sum(1 for r in recs if [t.role for t in r.turns] == ["assistant"]),
        "turns": {str(k): v for k, v in sorted(turns.items())},
        "languages": {"zh": langs.get("zh", 0), "en": langs.get("en", 0), "other": langs.get("other", 0)},
        "characters": _percentiles(report.char_lengths),
        "tool_calling": sum(1 for r in recs if any(t.tool_calls for t in r.turns)),
    }
    balance = label_balance(report.records)
    if balance:
        stats["labels"] = balance
    if report.token_lengths:
        toks = [n for n in report.token_lengths if n]
        stats["tokens"] = _percentiles(toks)
        stats["over_cutoff"] = sum(1 for n in toks if report.cutoff and n > report.cutoff)
    return stats


# ============================================================================ --fix
@dataclass
class FixResult:
    path: Path
    kept: int
    dropped: dict[str, int]
    trimmed: int
    masked: int


DROP = ("role_order", "empty", "duplicate", "near_duplicate", "leak", "near_leak", "no_supervised", "same_pair",
        "tool_call")


def fix(report: Report, out: str | Path, *, mask: bool = False, fmt: str | None = None,
        drop: tuple[str, ...] = DROP) -> FixResult:
    """Write a cleaned copy of the checked file: broken records, duplicates and leaked items dropped (the
    first of each duplicate group kept), every field trimmed, PII masked if asked. The input is never written."""
    out = Path(out)
    if out.resolve() == Path(report.path).resolve():
        raise LorakitError("--fix must write a new file, not the input", file=out, field="fix",
                           hint="Give another path; the input is never modified")
    drop_reason: dict[int, str] = {}
    for f in report.findings:
        if f.code in drop and f.index is not None:  # index: a record of the checked file (not of --eval)
            drop_reason.setdefault(f.index, f.code)
    kept, trimmed, masked = [], 0, 0
    for i, r in enumerate(report.records):
        if i in drop_reason:
            continue
        if not isinstance(r, Conversation):  # preference/KTO records are kept as they are
            kept.append(r)
            continue
        turns = []
        trimmed += any(t.content != t.content.strip() for t in r.turns) or \
            (r.system is not None and r.system != r.system.strip())
        for t in r.turns:
            c = t.content.strip()
            if mask:
                m = mask_pii(c)
                masked += m != c
                c = m
            turns.append(Turn(t.role, c, t.tool_calls))
        system = r.system.strip() if r.system is not None else None
        if mask and system:
            m = mask_pii(system)
            masked += m != system
            system = m
        kept.append(Conversation(turns=turns, system=system or None, source=dict(r.source), meta=dict(r.meta),
                                 tools=r.tools))
    fmt = fmt or (report.fmt if report.fmt != "llamafactory" else "messages")
    write_records(out, kept, fmt)
    return FixResult(out, len(kept), dict(Counter(drop_reason.values())), trimmed, masked)
