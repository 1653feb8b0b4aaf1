"""Read and write every dataset format people bring, into and out of the canonical `Conversation`.

Formats (names used by ``fmt`` and ``lorakit data convert --to``):

``messages``     OpenAI chat JSONL: ``{"messages": [{"role": "user", "content": "…"}, …], "source": {…}, …}``.
                 This is lorakit's canonical format; extra top-level fields (``keywords``, ``id``) are kept in
                 ``Conversation.meta`` and written back unchanged.
``alpaca``       ``{"instruction", "input", "output", "system"?, "history"?: [[q, a], …]}``. ``instruction`` and
                 ``input`` become one user message joined by a newline, as LLaMA-Factory does.
``sharegpt``     ``{"conversations": [{"from": "human", "value": "…"}, …], "system"?}`` with the usual role
                 names (human/user, gpt/assistant/bot/model, system).
``text``         plain text for continued pre-training: a ``.txt``/``.md`` file (paragraphs separated by blank
                 lines, or one record per line when there are no blank lines) or JSON records ``{"text": …}``.
                 A text record is a conversation with a single assistant turn.
``csv``/``tsv``  a header row and one record per row; ``columns`` maps roles to column names.
``llamafactory`` a LLaMA-Factory ``dataset_info.json``: its ``formatting``, ``columns`` and ``tags`` say how
                 to read the data file it names.

JSON arrays and JSONL are told apart by content, never by the file extension. Every record's ``source``
gets ``{"file": …, "line": N}`` (where it was read) merged over the record's own ``source`` object; writers
drop ``file`` and ``line`` again, so a round trip through any format keeps the content and provenance.

``columns`` uses LLaMA-Factory's names: ``prompt`` (instruction), ``query`` (input), ``response`` (output),
``system``, ``history``, ``messages`` (the turn list), ``text``; and its tag names ``role_tag``,
``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lorakit.data.record import Conversation, Turn
from lorakit.errors import LorakitError
from lorakit.io import atomic_path, write_json

FORMATS = ("messages", "alpaca", "sharegpt", "text", "csv", "tsv", "llamafactory", "preference", "kto")

USER_ROLES = ("user", "human", "usr", "question", "prompter")
ASSISTANT_ROLES = ("assistant", "gpt", "bot", "model", "chatgpt", "ai", "answer", "gemini", "claude")
SYSTEM_ROLES = ("system", "sys")
ROLE_ALIASES = {**{r: "user" for r in USER_ROLES}, **{r: "assistant" for r in ASSISTANT_ROLES},
                **{r: "system" for r in SYSTEM_ROLES}, "function_call": "function_call", "tool": "tool",
                "observation": "tool", "function": "tool", "ipython": "tool"}

# Column names recognised without a mapping (CSV headers and JSON keys), canonical name first.
DEFAULT_COLUMNS = {
    "prompt": ("instruction", "prompt", "question", "问题", "指令"),
    "query": ("input",),
    "response": ("output", "response", "answer", "completion", "答案", "回答"),
    "system": ("system", "system_prompt"),
    "history": ("history",),
    "text": ("text", "content"),
}
ALPACA_KEYS = ("prompt", "query", "response", "system", "history")
# meta key of a record read from alpaca with a non-empty input: the last user turn is instruction + "\n" + input
ALPACA_INPUT = "alpaca_input"

_TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")


@dataclass
class Parsed:
    """What a file held: the records that parsed, one error per record that did not, and the format."""

    records: list[Conversation]
    errors: list[LorakitError] = field(default_factory=list)
    fmt: str = "messages"
    lines: int = 0  # number of records attempted (parsed + failed)


# ============================================================================ public API
def read_records(path: str | Path, fmt: str | None = None, *, columns: dict | None = None,
                 dataset: str | None = None) -> list[Conversation]:
    """Read a dataset file in any supported format; raise `LorakitError` at the first bad record.

    ``fmt`` forces a format (see `FORMATS`); by default it is detected from the content. ``columns`` maps
    roles to field/column names (LLaMA-Factory names, see the module doc). ``dataset`` picks an entry of a
    ``dataset_info.json`` that registers more than one.
    """
    parsed = parse_records(path, fmt, columns=columns, dataset=dataset)
    if parsed.errors:
        first = parsed.errors[0]
        more = len(parsed.errors) - 1
        if more:
            hint = (first.hint + ". " if first.hint else "") + \
                f"{more} more record(s) have problems too: `lorakit data check {path}` lists them all"
            raise LorakitError(first.message, file=first.file, line=first.line, field=first.field, hint=hint)
        raise first
    return parsed.records


def dataset_ref(path: str | Path, dataset: str | None = None) -> tuple[Path, str | None]:
    """``data/dataset_info.json:NAME`` → (the file, NAME); any other path is returned as it is."""
    s = str(path)
    if not Path(s).exists() and ":" in s:
        head, _, name = s.rpartition(":")
        if name and Path(head).is_file():
            if dataset is not None and dataset != name:
                raise LorakitError(f"the path names dataset '{name}' but --dataset says '{dataset}'", file=head,
                                   field="dataset")
            return Path(head), name
    return Path(path), dataset


def detect_format(path: str | Path) -> str:
    """The format of a file, judged by its content (one of `FORMATS`)."""
    path = dataset_ref(path)[0]
    text = _read_text(path)
    return _detect(path, text)[0]


def parse_records(path: str | Path, fmt: str | None = None, *, columns: dict | None = None,
                  dataset: str | None = None) -> Parsed:
    """Like `read_records` but keeps going: returns the good records and one error per bad record.

    Problems with the file as a whole (missing, empty, binary, not UTF-8, unknown format) still raise.
    """
    path, dataset = dataset_ref(path, dataset)
    if fmt is not None and fmt not in FORMATS:
        raise LorakitError(f"unknown format '{fmt}'", field="format", hint="Use one of: " + ", ".join(FORMATS))
    text = _read_text(path)
    detected, container, data = _detect(path, text, fmt)
    if detected == "llamafactory" and fmt not in (None, "llamafactory"):
        raise LorakitError(f"this is a LLaMA-Factory dataset_info.json, not {fmt} data: each entry says its own "
                           "format", file=path, field="from",
                           hint="Drop --from and pick the entry with --dataset NAME (or write FILE:NAME)")
    fmt = fmt or detected
    if fmt == "llamafactory":
        return _read_dataset_info(path, data if data is not None else _load_json_whole(path, text), dataset)
    if dataset is not None:
        raise LorakitError(f"--dataset {dataset} names an entry of a LLaMA-Factory dataset_info.json, but this file "
                           f"is {fmt} data", file=path, field="dataset",
                           hint="Drop --dataset, or give the dataset_info.json that registers it")
    if fmt in ("csv", "tsv"):
        return _parse_csv(path, text, "\t" if fmt == "tsv" else ",", columns, fmt)
    if container == "text":
        if fmt != "text":
            raise LorakitError(f"the file is plain text, not {fmt} JSON", file=path,
                               hint="Drop --format to read it as plain text for continued pre-training")
        return _parse_plain_text(path, text)
    items = data if data is not None else _iter_json(path, text, container)
    return _parse_json_records(path, items, fmt, columns)


def write_records(path: str | Path, records: Iterable[Conversation], fmt: str = "messages", *,
                  name: str | None = None) -> Path:
    """Write records atomically in ``fmt``.

    JSON formats are written as one JSON array when ``path`` ends in ``.json`` and as JSONL otherwise.
    ``text`` writes paragraphs to a ``.txt``/``.md`` path and ``{"text": …}`` records otherwise.
    ``llamafactory`` writes the data file in sharegpt format and registers it (as ``name``, default the file
    stem) in a ``dataset_info.json`` beside it, keeping the entries already there.
    """
    path = Path(path)
    records = list(records)
    if fmt not in FORMATS:
        raise LorakitError(f"unknown format '{fmt}'", field="format", hint="Use one of: " + ", ".join(FORMATS))
    from lorakit.data import preference
    kind = preference.kind_of(records) if records else {"preference": "preference", "kto": "kto"}.get(fmt, "sft")
    if fmt == "llamafactory":
        return _write_llamafactory(path, records, name or path.stem, kind)
    if kind != "sft" or fmt in ("preference", "kto"):
        to_row = preference.row_writer(kind, fmt)
    elif fmt in ("csv", "tsv"):
        return _write_csv(path, records, "\t" if fmt == "tsv" else ",")
    elif fmt == "text" and path.suffix.lower() in _TEXT_SUFFIXES:
        return _write_plain_text(path, records)
    else:
        to_row = {"messages": messages_row, "alpaca": alpaca_row, "sharegpt": sharegpt_row, "text": text_row}[fmt]
    rows = (to_row(r, i) for i, r in enumerate(records, 1))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        if path.suffix.lower() == ".json":
            f.write("[\n")
            for i, row in enumerate(rows):
                f.write((",\n" if i else "") + "  " + json.dumps(row, ensure_ascii=False))
            f.write("\n]\n")
        else:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ============================================================================ reading the bytes
def _read_text(path: Path) -> str:
    if not path.exists():
        raise LorakitError("file not found", file=path)
    if path.is_dir():
        raise LorakitError("this is a folder, not a dataset file", file=path,
                           hint="Name the file itself (or a LLaMA-Factory dataset_info.json)")
    raw = path.read_bytes()
    if not raw.strip():
        raise LorakitError("the file is empty", file=path, hint="Expected records in one of: " + ", ".join(FORMATS))
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise LorakitError("the file is UTF-16 text", file=path, hint="Save it as UTF-8 and try again")
    head = raw[:8192]
    utf16 = _utf16_without_bom(head)
    if utf16:
        raise LorakitError(f"the file is UTF-16 text ({utf16}, no byte-order mark)", file=path,
                           hint=f"Convert it first: iconv -f {utf16} -t UTF-8 IN > OUT")
    magic = {b"PK\x03\x04": "a zip archive (xlsx/docx?)", b"\x1f\x8b": "gzip data", b"%PDF": "a PDF",
             b"\x89PNG": "a PNG image", b"\xd0\xcf\x11\xe0": "an old Office file (xls/doc?)"}
    kind = next((k for m, k in magic.items() if head.startswith(m)), None)
    if kind or b"\x00" in head:
        raise LorakitError(f"this is {kind or 'binary data'}, not a text dataset", file=path,
                           hint="Export it as JSON, JSONL, CSV or plain UTF-8 text first")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        tail = raw[e.start:].rstrip(b" \t\r\n")
        if len(tail) <= 3 and tail[:1] >= b"\xc0" and all(b >= 0x80 for b in tail):
            raise LorakitError("the file ends in the middle of a UTF-8 character: it was cut off (an interrupted "
                               "download or copy?)", file=path, line=line,
                               hint="Get the complete file again; the records before the cut are fine") from None
        try:
            raw.decode("gb18030")
            hint = "It reads as GBK/GB18030: convert it first: iconv -f GB18030 -t UTF-8 IN > OUT"
        except UnicodeDecodeError:
            hint = "Its bytes are neither UTF-8 nor GBK/GB18030 here: the file is damaged or in another encoding"
        raise LorakitError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} cannot be decoded)", file=path, line=line,
                           hint=hint) from None
    return text[1:] if text.startswith("\ufeff") else text


def _utf16_without_bom(head: bytes) -> str | None:
    """'UTF-16LE'/'UTF-16BE' when text bytes alternate with NULs (ASCII-range UTF-16 without a byte-order mark)."""
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    for zeros, name in ((odd, "UTF-16LE"), (even, "UTF-16BE")):
        if zeros.count(0) >= 0.4 * len(zeros) and (even if zeros is odd else odd).count(0) <= 0.05 * len(zeros):
            try:
                head[: len(head) // 2 * 2].decode(name.lower().replace("-", "_"))
                return name
            except UnicodeDecodeError:
                return None
    return None


def _json_error(e: json.JSONDecodeError) -> str:
    """'Unterminated string starting at column 12' (json's own message ends in 'at' for some errors)."""
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
    return f"not valid JSON ({msg} at column {e.colno})"


def _detect(path: Path, text: str, forced: str | None = None) -> tuple[str, str, Any]:
    """Return (format, container, preloaded data). container is 'array', 'jsonl', 'object' or 'text'."""
    stripped = text.lstrip()
    first = stripped[:1]
    data = None
    if first == "[":
        container = "array"
    elif first == "{":
        first_line = stripped.split("\n", 1)[0].strip()
        try:
            obj = json.loads(first_line)
            container = "jsonl"
            sample = obj
        except json.JSONDecodeError:
            obj = _load_json_whole(path, text, allow_fail=True)
            if isinstance(obj, dict) and _looks_like_dataset_info(obj):
                return "llamafactory", "object", obj
            # a pretty-printed single object or broken JSONL: read as JSONL so the error names its line
            container = "jsonl"
            sample = obj if isinstance(obj, dict) else None
        if isinstance(sample, dict) and _looks_like_dataset_info(sample) and "\n" not in stripped.rstrip():
            return "llamafactory", "object", sample
        if forced:
            return forced, container, None
        return (_record_format(sample) if isinstance(sample, dict) else "messages"), container, None
    else:
        if forced:
            return forced, "text", None
        delim = _sniff_table(path, text)
        if delim:
            return ("tsv" if delim == "\t" else "csv"), "table", None
        return "text", "text", None
    if forced:
        return forced, container, None
    # JSON array: look at the first element
    try:
        first_item = next(iter(_iter_json(path, text, "array")), None)
    except LorakitError:
        first_item = None
    if first_item is None:
        return "messages", container, None
    value = first_item[1]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        value = value[0]  # records wrapped in lists, as some published files are (see `_unwrap`)
    if isinstance(value, dict):
        return _record_format(value), container, None
    if isinstance(value, str):
        return "text", container, None
    return "messages", container, None


def _record_format(obj: dict) -> str:
    keys = set(obj)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if isinstance(obj.get("label"), bool) or "kto_tag" in keys:
        return "kto"
    if "messages" in obj or "conversations" in obj:
        turns = obj.get("messages", obj.get("conversations"))
        if isinstance(turns, list) and turns and isinstance(turns[0], dict) and "from" in turns[0]:
            return "sharegpt"
        return "sharegpt" if "conversations" in obj and "messages" not in obj else "messages"
    keys = set(obj)
    if (keys & set(DEFAULT_COLUMNS["prompt"]) or keys & set(DEFAULT_COLUMNS["response"])) and "completion" not in keys:
        return "alpaca"
    if keys & set(DEFAULT_COLUMNS["text"]):
        return "text"
    return "messages"


def _looks_like_dataset_info(obj: dict) -> bool:
    keys = ("file_name", "hf_hub_url", "ms_hub_url", "script_url", "cloud_file_name", "om_hub_url")
    return bool(obj) and all(isinstance(v, dict) and any(k in v for k in keys) for v in obj.values())


def _sniff_table(path: Path, text: str) -> str | None:
    """',' or '\\t' if the text is a table with a header row, else None (plain text)."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    if suffix in _TEXT_SUFFIXES:
        return None
    lines = [ln for ln in text.splitlines()[:3] if ln.strip()]
    if not lines:
        return None
    header = lines[0]
    for delim in ("\t", ","):
        cols = [c.strip().strip('"') for c in header.split(delim)]
        if len(cols) < 2 or not all(0 < len(c) <= 40 and " " not in c.strip() for c in cols):
            continue
        known = {n for names in DEFAULT_COLUMNS.values() for n in names}
        if any(c.lower() in known for c in cols):
            return delim
    return None


def _load_json_whole(path: Path, text: str, allow_fail: bool = False):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if allow_fail:
            return None
        raise LorakitError(_json_error(e), file=path, line=e.lineno)


def _iter_json(path: Path, text: str, container: str) -> Iterator[tuple[int, Any] | LorakitError]:
    """Yield (line, value) per record, or a LorakitError for a record that is not valid JSON.

    JSONL: one value per non-blank line; a bad line is reported and skipped. JSON array: elements are decoded
    one by one so each record knows its line; a syntax error ends the array (nothing after it can be trusted).
    """
    if container == "jsonl":
        loads = json.loads
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                yield lineno, loads(line)
            except json.JSONDecodeError as e:
                hint = None
                if line.lstrip().startswith("{") and not line.rstrip().endswith("}"):
                    hint = "Each JSONL record must be one complete JSON object on one line"
                yield LorakitError(_json_error(e), file=path, line=lineno,
                                   hint=hint)
        return
    decoder = json.JSONDecoder()
    n = len(text)
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    def skip_ws(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        return
    while True:
        pos = skip_ws(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield LorakitError(_json_error(e) + "; the rest of the array was not read",
                               file=path, line=e.lineno)
            return
        yield line_at(pos), value
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos += 1
            continue
        if pos < n and text[pos] == "]":
            if text[pos + 1:].strip():
                yield LorakitError("unexpected text after the closing ']' of the JSON array", file=path,
                                   line=line_at(pos + 1 + (len(text[pos + 1:]) - len(text[pos + 1:].lstrip()))))
            return
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        got = "the end of the file" if pos >= n else repr(text[pos])
        yield LorakitError(f"not valid JSON (expected ',' or ']' after a record, found {got} at column {col})",
                           file=path, line=line_at(pos))
        return


# ============================================================================ record parsers
def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "true/false", type(None): "null"}.get(type(v), type(v).__name__)


def _want_str(v: Any, where: str, path: Path, line: int, *, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if isinstance(v, str):
        return v
    raise LorakitError(f"expected a string, got {_type_name(v)}", file=path, line=line, field=where)


def _source_of(obj: dict, path: Path, line: int) -> dict:
    src = obj.get("source")
    if src is None:
        src = {}
    elif isinstance(src, str):
        src = {"document": src}
    elif not isinstance(src, dict):
        raise LorakitError(f"expected an object, got {_type_name(src)}", file=path, line=line, field="source")
    return {**src, "file": str(path), "line": line}


def _columns_for(fmt: str, columns: dict | None) -> dict:
    cols = dict(columns or {})
    if fmt == "alpaca":
        base = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                "history": "history"}
    elif fmt == "sharegpt":
        base = {"messages": "conversations", "system": "system", "role_tag": "from", "content_tag": "value"}
    elif fmt == "messages":
        base = {"messages": "messages", "system": "system", "role_tag": "role", "content_tag": "content"}
    elif fmt in ("preference", "kto"):  # any of the shapes (TRL, LLaMA-Factory alpaca or sharegpt ranking / KTO)
        base = {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                "history": "history", "messages": "messages", "role_tag": "role", "content_tag": "content",
                "chosen": "chosen", "rejected": "rejected", "kto_tag": "label"}
    else:
        base = {"text": "text"}
    return {**base, **cols}


class WholeFileError(LorakitError):
    """A record shows that the whole file cannot be used (e.g. it is multimodal): said once, not per record."""


def _unwrap(items: Iterable) -> Iterator:
    """Records wrapped in lists (lawyer-llama's legal_advice.json is a list of one-element lists of alpaca
    records): each object inside a list of objects is a record of its own, at the line of its list."""
    for item in items:
        if isinstance(item, tuple) and isinstance(item[1], list) and item[1] and \
                all(isinstance(v, dict) for v in item[1]):
            for v in item[1]:
                yield item[0], v
        else:
            yield item


def _parse_json_records(path: Path, items: Iterable, fmt: str, columns: dict | None) -> Parsed:
    from lorakit.data import preference
    parsed = Parsed(records=[], fmt=fmt)
    cols = _columns_for(fmt, columns)
    one = {"alpaca": _alpaca_record, "sharegpt": _chat_record, "messages": _chat_record, "text": _text_record,
           "preference": preference.preference_record, "kto": preference.feedback_record}[fmt]
    for item in _unwrap(items):
        parsed.lines += 1
        if isinstance(item, LorakitError):
            parsed.errors.append(item)
            continue
        line, obj = item
        try:
            if fmt == "text" and isinstance(obj, str):
                obj = {cols["text"]: obj}
            if not isinstance(obj, dict):
                raise LorakitError(f"expected a JSON object per record, got {_type_name(obj)}", file=path, line=line)
            refuse_multimodal(obj, path, line, cols)
            parsed.records.append(one(obj, path, line, cols, fmt))
        except WholeFileError:
            raise
        except LorakitError as e:
            parsed.errors.append(e)
    return parsed


MEDIA_KEYS = ("images", "videos", "audios")
_PLACEHOLDERS = ("<image>", "<video>", "<audio>")


def _multimodal_refusal(what: str, file, line=None, field=None) -> WholeFileError:
    return WholeFileError(
        f"this is multimodal data ({what}); lorakit trains text-only language models, and training on the "
        "placeholders without the media would teach the model to answer about pictures or sounds it never saw",
        file=file, line=line, field=field,
        hint="Use a text dataset, or a vision-language toolkit (LLaMA-Factory, ms-swift) for this one")


def refuse_multimodal(obj: dict, path: Path, line: int, cols: dict) -> None:
    """Refuse a record that carries images, videos or audio (fields, content parts or <image> placeholders)."""
    for key in MEDIA_KEYS:
        name = cols.get(key, key)
        if obj.get(name):
            raise _multimodal_refusal(f"record field '{name}'", path, line, name)
    turns = obj.get(cols.get("messages", "messages"), obj.get("conversations", obj.get("messages")))
    texts = [obj.get(cols.get("prompt", "instruction")), obj.get(cols.get("query", "input"))]
    for t in turns if isinstance(turns, list) else []:
        if isinstance(t, dict):
            c = t.get(cols.get("content_tag", "content"), t.get("value", t.get("content")))
            if isinstance(c, list):
                kinds = {p.get("type") for p in c if isinstance(p, dict)} - {"text", None}
                if kinds:
                    raise _multimodal_refusal(f"{sorted(kinds)[0]} content parts", path, line)
            texts.append(c)
    for text in texts:
        if isinstance(text, str) and "<" in text:
            tag = next((p for p in _PLACEHOLDERS if p in text), None)
            if tag:
                raise _multimodal_refusal(f"{tag} placeholders in the text", path, line)


def _role(name: Any, where: str, path: Path, line: int, cols: dict) -> str:
    name = _want_str(name, where, path, line)
    explicit = {cols.get("user_tag"): "user", cols.get("assistant_tag"): "assistant",
                cols.get("system_tag"): "system"}
    if name in explicit and name is not None:
        return explicit[name]
    explicit = {cols.get("function_tag"): "function_call", cols.get("observation_tag"): "tool"}
    if name in explicit and name is not None:
        return explicit[name]
    role = ROLE_ALIASES.get(name.strip().lower())
    if role is None:
        known = "user (human), assistant (gpt, bot, model), system, function_call and tool (observation)"
        raise LorakitError(f"unknown role '{name}' (known: {known})", file=path, line=line, field=where,
                           hint="Map it with a dataset_info.json 'tags' entry (user_tag/assistant_tag)")
    return role


def _content(v: Any, where: str, path: Path, line: int) -> str:
    if isinstance(v, list):  # OpenAI content parts
        parts = []
        for j, p in enumerate(v):
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
            else:
                raise LorakitError("only text content parts are supported", file=path, line=line,
                                   field=f"{where}[{j}]")
        return "".join(parts)
    return _want_str(v, where, path, line)


def _chat_record(obj: dict, path: Path, line: int, cols: dict, fmt: str) -> Conversation:
    key = cols["messages"]
    if key not in obj:
        other = "conversations" if key == "messages" else "messages"
        if other in obj:
            key = other
        else:
            raise LorakitError(f"missing field '{key}' (the list of turns)", file=path, line=line, field=key,
                               hint=f"The file looks like {fmt} data, where every record has '{key}'")
    from lorakit.data.tools import parse_tools
    msgs = chat_turns(obj[key], key, path, line, cols)
    system = _want_str(obj.get(cols["system"]), cols["system"], path, line, optional=True)
    conv = Conversation.from_messages(msgs, source=_source_of(obj, path, line))
    if system is not None:
        if conv.system is not None:
            raise LorakitError("the record has a system field and a system turn", file=path, line=line,
                               field=cols["system"])
        conv.system = system
    tools_key = cols.get("tools", "tools")
    conv.tools = parse_tools(obj.get(tools_key), tools_key, path, line)
    used = {key, cols["system"], "source", tools_key}
    conv.meta = {k: v for k, v in obj.items() if k not in used}
    return conv


def chat_turns(turns_in: Any, key: str, path: Path, line: int, cols: dict) -> list[dict]:
    """A list of turn objects (any role/content tag names) as messages; a LLaMA-Factory ``function_call`` turn
    becomes an assistant message with ``tool_calls``, an ``observation`` a ``tool`` message."""
    from lorakit.data.tools import calls_from_openai, calls_from_text
    if not isinstance(turns_in, list):
        raise LorakitError(f"expected a list of turns, got {_type_name(turns_in)}", file=path, line=line, field=key)
    role_tag, content_tag = cols.get("role_tag", "role"), cols.get("content_tag", "content")
    msgs = []
    for j, t in enumerate(turns_in):
        where = f"{key}[{j}]"
        if not isinstance(t, dict):
            raise LorakitError(f"expected a turn object, got {_type_name(t)}", file=path, line=line, field=where)
        rt = role_tag if role_tag in t else ("from" if "from" in t else "role")
        ct = content_tag if content_tag in t else ("value" if "value" in t else "content")
        if rt not in t:
            raise LorakitError(f"missing the role ('{role_tag}')", file=path, line=line, field=where)
        role = _role(t[rt], f"{where}.{rt}", path, line, cols)
        calls = calls_from_openai(t.get("tool_calls"), f"{where}.tool_calls", path, line)
        if ct not in t or (t[ct] is None and calls):
            if not calls:
                raise LorakitError(f"missing the text ('{content_tag}')", file=path, line=line, field=where)
            content = ""
        else:
            content = _content(t[ct], f"{where}.{ct}", path, line)
        if role == "function_call":
            role, calls, content = "assistant", calls_from_text(content), ""
        msg = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = calls
        msgs.append(msg)
    return msgs


def _alpaca_record(obj: dict, path: Path, line: int, cols: dict, fmt: str) -> Conversation:
    pk, rk = cols["prompt"], cols["response"]
    for k in (pk, rk):
        if k not in obj:
            raise LorakitError(f"missing field '{k}'", file=path, line=line, field=k,
                               hint=f"Alpaca records need '{pk}' and '{rk}' ('{cols['query']}', "
                                    f"'{cols['system']}' and '{cols['history']}' are optional)")
    instruction = _want_str(obj[pk], pk, path, line)
    query = _want_str(obj.get(cols["query"]), cols["query"], path, line, optional=True)
    response = obj[rk]
    if isinstance(response, list):
        raise LorakitError("expected a string, got a list", file=path, line=line, field=rk,
                           hint="Several outputs are ranking (preference) data: read it with --from preference")
    response = _want_str(response, rk, path, line)
    system = _want_str(obj.get(cols["system"]), cols["system"], path, line, optional=True)
    turns = _history_turns(obj.get(cols["history"]), cols["history"], path, line)
    prompt = instruction + ("\n" + query if query else "")
    turns += [Turn("user", prompt), Turn("assistant", response)]
    used = {pk, rk, cols["query"], cols["system"], cols["history"], "source"}
    meta = {k: v for k, v in obj.items() if k not in used}
    if query:
        meta[ALPACA_INPUT] = query  # so that writing alpaca again splits instruction and input as they were
    return Conversation(turns=turns, system=system or None, source=_source_of(obj, path, line), meta=meta)


def _history_turns(history: Any, where: str, path: Path, line: int) -> list[Turn]:
    if history in (None, ""):
        return []
    if isinstance(history, str):  # CSV cells carry it as JSON
        try:
            history = json.loads(history)
        except json.JSONDecodeError as e:
            raise LorakitError(f"history is not valid JSON ({e.msg})", file=path, line=line, field=where)
    if not isinstance(history, list):
        raise LorakitError(f"expected a list of [question, answer] pairs, got {_type_name(history)}",
                           file=path, line=line, field=where)
    turns = []
    for j, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise LorakitError("expected a [question, answer] pair", file=path, line=line, field=f"{where}[{j}]")
        turns.append(Turn("user", _want_str(pair[0], f"{where}[{j}][0]", path, line)))
        turns.append(Turn("assistant", _want_str(pair[1], f"{where}[{j}][1]", path, line)))
    return turns


def _text_record(obj: dict, path: Path, line: int, cols: dict, fmt: str) -> Conversation:
    key = cols["text"]
    if key not in obj:
        raise LorakitError(f"missing field '{key}'", file=path, line=line, field=key)
    text = _want_str(obj[key], key, path, line)
    return Conversation(turns=[Turn("assistant", text)], source=_source_of(obj, path, line),
                        meta={k: v for k, v in obj.items() if k not in (key, "source")})


def _parse_plain_text(path: Path, text: str) -> Parsed:
    lines = text.split("\n")
    blank_separated = any(not ln.strip() for ln in text.strip("\n").split("\n"))
    parsed = Parsed(records=[], fmt="text")
    src = str(path)
    if not blank_separated:
        for i, ln in enumerate(lines, 1):
            if ln.strip():
                parsed.records.append(Conversation([Turn("assistant", ln.rstrip("\r"))],
                                                   source={"file": src, "line": i}))
    else:
        start, buf = None, []
        for i, ln in enumerate(lines + [""], 1):
            if ln.strip():
                if start is None:
                    start = i
                buf.append(ln.rstrip("\r"))
            elif buf:
                parsed.records.append(Conversation([Turn("assistant", "\n".join(buf))],
                                                   source={"file": src, "line": start}))
                start, buf = None, []
    parsed.lines = len(parsed.records)
    return parsed


def _parse_csv(path: Path, text: str, delim: str, columns: dict | None, fmt: str) -> Parsed:
    parsed = Parsed(records=[], fmt=fmt)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        raise LorakitError("the file is empty", file=path)
    header = [h.strip() for h in header]
    mapping = _csv_mapping(path, header, columns)
    index = {h: i for i, h in enumerate(header)}
    mapped = set(mapping.values())
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            parsed.errors.append(LorakitError(f"malformed {fmt.upper()} row ({e})", file=path, line=start))
            break
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        parsed.lines += 1
        if len(row) != len(header):
            parsed.errors.append(LorakitError(
                f"the row has {len(row)} column(s) but the header has {len(header)}", file=path, line=start,
                hint=f"Check for an unquoted '{'tab' if delim == chr(9) else delim}' or a missing column"))
            continue
        obj = {role: row[index[col]] for role, col in mapping.items()}
        extra = {h: row[i] for h, i in index.items() if h not in mapped and row[i] != ""}
        try:
            if "text" in mapping and "prompt" not in mapping:
                conv = _text_record({"text": obj["text"]}, path, start, {"text": "text"}, "text")
            else:
                src = extra.pop("source", None)
                rec = {"instruction": obj["prompt"], "output": obj["response"], "input": obj.get("query"),
                       "system": obj.get("system") or None, "history": obj.get("history") or None}
                if src:
                    try:
                        rec["source"] = json.loads(src)
                    except json.JSONDecodeError:
                        rec["source"] = {"document": src}
                conv = _alpaca_record(rec, path, start, _columns_for("alpaca", None), "alpaca")
            conv.meta = {k: _maybe_json(v) for k, v in extra.items()}
            parsed.records.append(conv)
        except LorakitError as e:
            parsed.errors.append(e)
    return parsed


def _maybe_json(v: str):
    if v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return v


def _csv_mapping(path: Path, header: list[str], columns: dict | None) -> dict:
    """role -> column name, from the user's mapping or recognised header names."""
    lower = {h.lower(): h for h in header}
    mapping: dict[str, str] = {}
    for role, col in (columns or {}).items():
        if role.endswith("_tag"):
            continue
        if col not in header:
            raise LorakitError(f"column '{col}' (mapped to {role}) is not in the header", file=path, line=1,
                               field=col, hint="The header has: " + ", ".join(header))
        mapping[role] = col
    for role, names in DEFAULT_COLUMNS.items():
        if role not in mapping:
            for n in names:
                if n in lower and lower[n] not in mapping.values():
                    mapping[role] = lower[n]
                    break
    if "prompt" in mapping and "response" in mapping:
        return mapping
    if "text" in mapping and "prompt" not in mapping and "response" not in mapping:
        return {"text": mapping["text"]}
    missing = "response" if "prompt" in mapping else "prompt"
    names = " or ".join(f"'{n}'" for n in DEFAULT_COLUMNS[missing][:4])
    raise LorakitError(f"missing column: no {missing} column ({names}) in the header", file=path, line=1,
                       field=missing, hint="The header has: " + ", ".join(header) +
                       f"; map yours with --column {missing}=NAME")


def _read_dataset_info(path: Path, info: Any, dataset: str | None) -> Parsed:
    if not isinstance(info, dict) or not _looks_like_dataset_info(info):
        raise LorakitError("not a LLaMA-Factory dataset_info.json (expected name -> {file_name, …})", file=path)
    if dataset is None:
        if len(info) > 1:
            raise LorakitError("the dataset_info.json registers several datasets", file=path, field="dataset",
                               hint="Pick one with --dataset: " + ", ".join(info))
        dataset = next(iter(info))
    if dataset not in info:
        raise LorakitError(f"no dataset named '{dataset}'", file=path, field=dataset,
                           hint="Registered: " + ", ".join(info))
    entry = info[dataset]
    if "file_name" not in entry:
        raise LorakitError("the dataset lives on a hub; lorakit reads local files only", file=path, field=dataset,
                           hint="Download it and register it with file_name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise LorakitError(f"unsupported formatting '{formatting}' (alpaca, sharegpt or openai)", file=path,
                           field=f"{dataset}.formatting")
    cols = {**entry.get("columns", {}), **entry.get("tags", {})}
    media = [k for k in MEDIA_KEYS if k in cols]
    if media:
        raise _multimodal_refusal(f"dataset '{dataset}' has {', '.join(media)} columns", path, field=dataset)
    if formatting == "sharegpt" and "messages" not in cols:
        cols["messages"] = "conversations"  # LLaMA-Factory's default for sharegpt
    if entry.get("ranking"):
        fmt = "preference"
    elif "kto_tag" in cols:
        fmt = "kto"
    elif formatting == "alpaca" and "prompt" in cols and "response" not in cols and "query" not in cols:
        fmt, cols = "text", {"text": cols["prompt"]}  # pre-training corpus: columns {"prompt": "text"}
    else:
        fmt = "messages" if formatting == "openai" else formatting
    data = path.parent / entry["file_name"]
    files = sorted(p for p in data.rglob("*") if p.is_file()) if data.is_dir() else [data]
    if not data.exists():
        raise LorakitError(f"the data file '{entry['file_name']}' does not exist", file=path,
                           field=f"{dataset}.file_name")
    out = Parsed(records=[], fmt=fmt)
    for f in files:
        suffix = f.suffix.lower()
        ffmt = suffix[1:] if suffix in (".csv", ".tsv") else fmt
        p = parse_records(f, ffmt if ffmt != "text" or suffix not in _TEXT_SUFFIXES else "text", columns=cols)
        out.records += p.records
        out.errors += p.errors
        out.lines += p.lines
    return out


# ============================================================================ writers
def _clean_source(conv: Conversation) -> dict:
    return {k: v for k, v in conv.source.items() if k not in ("file", "line")}


def _chat_pairs(conv: Conversation, i: int, fmt: str) -> list[tuple[str, str]]:
    turns = conv.turns
    roles = [t.role for t in turns]
    if roles == ["assistant"]:
        raise LorakitError(f"record {i} is plain text (no user turn), which {fmt} cannot hold",
                           hint="Write it as text or messages instead")
    if len(turns) % 2 or any(r != ("user", "assistant")[j % 2] for j, r in enumerate(roles)):
        raise LorakitError(f"record {i} does not alternate user/assistant turns, which {fmt} cannot hold",
                           hint="Fix it with `lorakit data check --fix`, or write messages or sharegpt")
    return [(turns[j].content, turns[j + 1].content) for j in range(0, len(turns), 2)]


def _with_extras(row: dict, conv, skip: tuple[str, ...] = ()) -> dict:
    src = _clean_source(conv)
    if src:
        row["source"] = src
    for k, v in conv.meta.items():
        if k not in skip:
            row.setdefault(k, v)
    return row


def messages_row(conv: Conversation, i: int = 0) -> dict:
    row: dict[str, Any] = {"messages": conv.messages()}
    if conv.tools:
        row["tools"] = conv.tools
    return _with_extras(row, conv)


def alpaca_row(conv: Conversation, i: int = 0) -> dict:
    pairs = _chat_pairs(conv, i, "alpaca")
    instruction, query = split_input(pairs[-1][0], conv.meta)
    row: dict[str, Any] = {"instruction": instruction, "input": query, "output": pairs[-1][1]}
    if conv.system:
        row["system"] = conv.system
    if len(pairs) > 1:
        row["history"] = [list(p) for p in pairs[:-1]]
    return _with_extras(row, conv, skip=(ALPACA_INPUT,))


def split_input(prompt: str, meta: dict) -> tuple[str, str]:
    """(instruction, input) of an alpaca prompt read earlier with an input (kept in meta), else (prompt, "")."""
    query = meta.get(ALPACA_INPUT)
    if isinstance(query, str) and query and prompt.endswith("\n" + query):
        return prompt[: -len(query) - 1], query
    return prompt, ""


def sharegpt_turn(t: Turn) -> dict:
    """A turn in LLaMA-Factory's sharegpt form (tool calls as a function_call turn, results as observation)."""
    if t.tool_calls:
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in t.tool_calls]
        return {"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)}
    names = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
    return {"from": names.get(t.role, t.role), "value": t.content}


def sharegpt_row(conv: Conversation, i: int = 0) -> dict:
    row: dict[str, Any] = {"conversations": [sharegpt_turn(t) for t in conv.turns]}
    if conv.system:
        row["system"] = conv.system
    if conv.tools:
        row["tools"] = json.dumps([t["function"] for t in conv.tools], ensure_ascii=False)
    return _with_extras(row, conv)


def text_row(conv: Conversation, i: int = 0) -> dict:
    return _with_extras({"text": conv.text()}, conv)


def _write_plain_text(path: Path, records: list[Conversation]) -> Path:
    import re
    blank = re.compile(r"\n\s*\n")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, conv in enumerate(records):
            body = blank.sub("\n", conv.text().strip("\n"))
            f.write(("\n" if i else "") + body + "\n")
    return path


def _write_csv(path: Path, records: list[Conversation], delim: str) -> Path:
    rows = []
    meta_keys: list[str] = []
    for i, conv in enumerate(records, 1):
        if [t.role for t in conv.turns] == ["assistant"] and not conv.system:
            row = {"instruction": "", "input": "", "output": "", "text": conv.turns[0].content}
        else:
            pairs = _chat_pairs(conv, i, "csv")
            row = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1],
                   "history": json.dumps([list(p) for p in pairs[:-1]], ensure_ascii=False) if len(pairs) > 1 else ""}
        row["system"] = conv.system or ""
        src = _clean_source(conv)
        row["source"] = json.dumps(src, ensure_ascii=False) if src else ""
        for k, v in conv.meta.items():
            if k not in meta_keys:
                meta_keys.append(k)
            row[k] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        rows.append(row)
    has_text = any("text" in r for r in rows)
    has_chat = any("text" not in r for r in rows)
    if has_text and has_chat:
        raise LorakitError("CSV cannot mix plain-text and chat records in one file",
                           hint="Split them, or write messages JSONL")
    base = ["text"] if has_text else ["system", "instruction", "input", "output", "history"]
    fields = base + ["source"] + [k for k in meta_keys if k not in base and k != "source"]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter=delim, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _write_llamafactory(path: Path, records: list, name: str, kind: str = "sft") -> Path:
    if path.name == "dataset_info.json":
        raise LorakitError("name the data file to write (e.g. data/law_qa.json); "
                           "dataset_info.json is written beside it", file=path)
    write_records(path, records, "sharegpt")
    info_path = path.parent / "dataset_info.json"
    info = {}
    if info_path.exists():
        info = _load_json_whole(info_path, _read_text(info_path))
        if not isinstance(info, dict):
            raise LorakitError("not a LLaMA-Factory dataset_info.json", file=info_path)
    entry: dict[str, Any] = {"file_name": path.name, "formatting": "sharegpt",
                             "columns": {"messages": "conversations", "system": "system"},
                             "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                      "assistant_tag": "gpt", "observation_tag": "observation",
                                      "function_tag": "function_call"}}
    if any(getattr(r, "tools", None) for r in records):
        entry["columns"]["tools"] = "tools"
    if kind == "preference":
        entry["ranking"] = True
        entry["columns"].update(chosen="chosen", rejected="rejected")
    elif kind == "kto":
        entry["columns"]["kto_tag"] = "label"
    info[name] = entry
    write_json(info_path, info)
    return path


def parse_columns(pairs: Iterable[str]) -> dict[str, str] | None:
    """``["prompt=question", "response=answer"]`` (the CLI's --column options) -> a columns mapping."""
    out: dict[str, str] = {}
    known = set(DEFAULT_COLUMNS) | {"messages", "role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag",
                                    "observation_tag", "function_tag", "chosen", "rejected", "kto_tag", "tools"}
    for p in pairs:
        role, sep, name = p.partition("=")
        role, name = role.strip(), name.strip()
        if not sep or not role or not name:
            raise LorakitError(f"'{p}' is not ROLE=NAME", field="column", hint="E.g. --column prompt=question")
        if role not in known:
            raise LorakitError(f"unknown role '{role}'", field="column", hint="Known: " + ", ".join(sorted(known)))
        out[role] = name
    return out or None
