"""Reading documents for retrieval: files and folders → article chunks, and matching document names loosely.

Chunking is `lorakit.data.build`'s: one chunk per article (``第X条``) for law-style documents, heading and
paragraph chunks for anything else. This module only finds the files, checks them and keeps the chunks in
order.

Names of documents are rarely written in full: an answer cites 《道路交通安全法》 for 中华人民共和国道路交通安全法,
a test set says 最高法交通肇事刑事案件司法解释 for the Supreme People's Court interpretation whose title
(最高人民法院关于审理交通肇事刑事案件……的解释) is twice as long. `resolve_document` maps such a name to one of the indexed titles (see its rules).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from lorakit.data.build import Chunk, chunk_document
from lorakit.errors import LorakitError

DOC_SUFFIXES = (".md", ".markdown", ".txt")


def find_documents(paths: Sequence[str | Path]) -> list[Path]:
    """The document files named: files as given, folders expanded to their .md/.markdown/.txt files (sorted)."""
    if not paths:
        raise LorakitError("no documents given", field="docs", hint="Name Markdown or text files, or a folder of them")
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DOC_SUFFIXES
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not inside:
                raise LorakitError("this folder holds no .md, .markdown or .txt document", file=p,
                                   hint="Convert the documents to Markdown or UTF-8 text first")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise LorakitError("no such document file or folder", file=p)
    seen, unique = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def load_chunks(paths: Sequence[str | Path], *, max_chars: int = 600) -> list[Chunk]:
    """Every chunk of every document, in order; a document that yields no text is an error."""
    chunks: list[Chunk] = []
    for f in find_documents(paths):
        if f.stat().st_size == 0 or not f.read_bytes().strip():
            raise LorakitError("the document is empty", file=f, hint="Remove it from the list or give it its text")
        got = [c for c in chunk_document(f, max_chars=max_chars) if c.text.strip()]
        if not got:
            raise LorakitError("this document has no text to index (only headings or comments)", file=f,
                               hint="Check that it is the document itself and not an empty export")
        chunks += got
    return chunks


# ============================================================================ document names
_PUNCT = re.compile(r"[\s《》〈〉<>“”\"'‘’「」『』()（）\[\]【】,，.。:：;；、·\-—_]+")
_PREFIXES = ("中华人民共和国",)
# Short forms that Chinese legal writing uses for the same words: 最高法 = 最高人民法院, X司法解释 = X的解释.
_ALIASES = ((re.compile(r"最高法(?!院)"), "最高人民法院"), (re.compile("司法解释$"), "解释"))


def normalize_title(name: str) -> str:
    """'《中华人民共和国道路交通安全法》' → '道路交通安全法': NFKC, lower-case, no brackets, spaces or country prefix;
    the short forms 最高法 and 司法解释 written out."""
    text = _PUNCT.sub("", unicodedata.normalize("NFKC", name or "")).lower()
    for p in _PREFIXES:
        if text.startswith(p) and len(text) > len(p):
            text = text[len(p):]
    for pattern, full in _ALIASES:
        text = pattern.sub(full, text)
    return text


# A name that extends an indexed title with one of these is another instrument (道路交通安全法实施条例 is not the law).
_OTHER_INSTRUMENT = re.compile(r"(实施条例|实施细则|实施办法|细则|条例|规定|办法|解释|决定)$")


def _abbreviates(short: str, title: str) -> bool:
    """``short`` keeps ``title``'s characters in order and ends like it (法, 条例, 规定, 办法, 解释: the kind of
    instrument), the way Chinese abbreviates titles: 道交法 for 道路交通安全法, 记分办法 for …记分管理办法."""
    if len(short) < 3 or short[-1] != title[-1]:
        return False
    it = iter(title)
    return all(c in it for c in short)


def resolve_document(name: str | None, titles: Iterable[str]) -> str | None:
    """The indexed title a (possibly short or informal) document name refers to, or None: not in the index.

    Rules, in order: equal after `normalize_title`; else the titles that contain the name (or that it contains),
    the closest in length first (《道路交通安全法》 → the law, not its implementing regulations); else the
    shortest title the name abbreviates (`_abbreviates`: 最高法交通肇事刑事案件司法解释 → 最高人民法院关于审理交通
    肇事刑事案件……的解释), when one is shortest. A name that is none of these is *not in the index*: it is never
    mapped to the closest-looking title (工伤保险条例 is not 机动车交通事故责任强制保险条例).
    """
    if not name:
        return None
    titles = list(dict.fromkeys(titles))
    want = normalize_title(name)
    if not want:
        return None
    norm = {t: normalize_title(t) for t in titles}
    exact = [t for t in titles if norm[t] == want]
    if exact:
        return exact[0]
    contains = [t for t in titles if want in norm[t] or (norm[t] and norm[t] in want
                                                          and not _OTHER_INSTRUMENT.search(want.replace(norm[t], "", 1)))]
    if contains:
        return min(contains, key=lambda t: abs(len(norm[t]) - len(want)))
    abbreviated = sorted((t for t in titles if norm[t] and _abbreviates(want, norm[t])), key=lambda t: len(norm[t]))
    if not abbreviated or (len(abbreviated) > 1 and len(norm[abbreviated[0]]) == len(norm[abbreviated[1]])):
        return None  # none, or a tie: the name does not say which document it means
    return abbreviated[0]


_SUB = re.compile(r"条之([一二三四五六七八九十\d]+)")


def article_key(article: str | None) -> tuple[int, int] | None:
    """'第一百三十三条之一' → (133, 1), '第九十一条' → (91, 0): 之一/之二 articles are articles of their own."""
    number = _article_number(article)
    if number is None:
        return None
    m = _SUB.search(str(article))
    if not m:
        return number, 0
    from lorakit.data.build import chinese_numeral_to_int
    try:
        return number, chinese_numeral_to_int(m.group(1))
    except ValueError:
        return number, 0


def chunk_key(chunk: Chunk) -> tuple[int, int]:
    """(number, 之N) of a chunk; non-article chunks keep their position as the number."""
    return article_key(chunk.article) or (chunk.number, 0)


def _article_number(article: str | None) -> int | None:
    from lorakit.data.build import chinese_numeral_to_int
    if not article:
        return None
    a = str(article).strip()
    if a.startswith("第") and "条" in a:
        a = a[1:a.index("条")]
    try:
        return chinese_numeral_to_int(a)
    except ValueError:
        return None


def source_chunks(source: dict | None, chunks: Sequence[Chunk]) -> tuple[list[int], str | None, str | None]:
    """(ids of the chunks a record's ``source`` names, the indexed title its document maps to, why none).

    Why-strings distinguish a record without a source from one whose law is *not in the index* and one whose
    law is indexed but lacks that article."""
    doc, article = (source or {}).get("document"), (source or {}).get("article")
    key = article_key(article)
    if not doc or key is None:
        return [], None, "no source.document and source.article"
    title = resolve_document(doc, (c.document for c in chunks))
    if title is None:
        return [], None, f"not in the index: no indexed document is '{doc}'"
    ids = [i for i, c in enumerate(chunks) if c.document == title and chunk_key(c) == key]
    if not ids:
        return [], title, f"'{title}' has no {article}"
    return ids, title, None
