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


def normalize_title(name: str) -> str:
    """'《中华人民共和国道路交通安全法》' → '道路交通安全法': NFKC, lower-case, no brackets, spaces or country prefix."""
    text = _PUNCT.sub("", unicodedata.normalize("NFKC", name or "")).lower()
    for p in _PREFIXES:
        if text.startswith(p) and len(text) > len(p):
            text = text[len(p):]
    return text


def _bigrams(text: str) -> set[str]:
    return {text[i:i + 2] for i in range(len(text) - 1)} or ({text} if text else set())


def title_similarity(a: str, b: str) -> float:
    """Dice coefficient of the character bigrams of two normalised titles (0..1)."""
    x, y = _bigrams(normalize_title(a)), _bigrams(normalize_title(b))
    if not x or not y:
        return 0.0
    return 2 * len(x & y) / (len(x) + len(y))


def resolve_document(name: str | None, titles: Iterable[str], *, min_similarity: float = 0.3) -> str | None:
    """The indexed title a (possibly short or informal) document name refers to, or None.

    Rules, in order: equal after `normalize_title`; else the titles that contain the name (or that it contains),
    the closest in length first (《道路交通安全法》 → the law, not its implementing regulations); else the title
    with the highest character-bigram Dice similarity, if it reaches ``min_similarity`` and is unique
    (最高法交通肇事刑事案件司法解释 → 最高人民法院关于审理交通肇事刑事案件……的解释).
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
    contains = [t for t in titles if want in norm[t] or (norm[t] and norm[t] in want)]
    if contains:
        return min(contains, key=lambda t: (abs(len(norm[t]) - len(want)), -title_similarity(t, name)))
    scored = sorted(((title_similarity(t, name), t) for t in titles), reverse=True)
    if not scored or scored[0][0] < min_similarity:
        return None
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        return None  # a tie: the name does not say which document it means
    return scored[0][1]
