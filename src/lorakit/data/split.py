"""`lorakit data split`: train/eval(/test) splits with nothing leaking across them.

Records are first grouped: near duplicates (MinHash, the same search `data check` uses; exact duplicates are
near duplicates at similarity 1) and records built from the same source article (``source.document`` +
``source.article``) end up in one group. Whole groups are then dealt to the splits in a seeded random order
until each split has its share, so the same seed always gives the same split, and no eval or test item has a
near twin, or a sibling question about the same article, in the training set.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorakit.data import minhash
from lorakit.data.formats import read_records, write_records
from lorakit.data.preference import kind_of
from lorakit.data.record import Conversation, as_conversation
from lorakit.errors import LorakitError


@dataclass
class SplitResult:
    paths: dict[str, Path]
    sizes: dict[str, int]
    groups: int  # number of groups the records formed
    largest_group: int


def group_ids(records: list[Conversation], *, threshold: float = 0.8, by_source: bool = True,
              ngram: int = 3) -> np.ndarray:
    """A group id per record: near duplicates and records of the same source article share one."""
    texts = [minhash.normalize("\n".join(t.content for t in as_conversation(r).turns)) for r in records]
    pairs = [(i, j) for i, j, _ in minhash.near_duplicates(texts, threshold=threshold, n=ngram, normalized=True)]
    if by_source:
        first: dict[tuple, int] = {}
        for i, r in enumerate(records):
            doc, art = r.source.get("document"), r.source.get("article")
            if doc is not None and art is not None:
                key = (doc, art)
                if key in first:
                    pairs.append((first[key], i))
                else:
                    first[key] = i
    return minhash.groups(len(records), pairs)


def _target(share: float | int, n: int, name: str) -> int:
    if isinstance(share, bool) or share < 0:
        raise LorakitError(f"must be a ratio in [0, 1) or a count >= 0, got {share}", field=name)
    if isinstance(share, float) and share < 1:
        return int(round(share * n))
    if isinstance(share, float) and not share.is_integer():
        raise LorakitError(f"must be a ratio below 1 or a whole count, got {share}", field=name)
    return int(share)


def split_records(records: list[Conversation], *, eval: float | int = 0.1, test: float | int = 0, seed: int = 0,
                  threshold: float = 0.8, by_source: bool = True) -> tuple[dict[str, list[Conversation]], np.ndarray]:
    """Deal whole groups to test, eval and train; returns the splits (records in file order) and group ids.

    ``eval``/``test`` are ratios (0.1) or counts (200). A group never straddles two splits, so a split may
    come out slightly smaller than asked when groups are large.
    """
    n = len(records)
    n_eval, n_test = _target(eval, n, "eval"), _target(test, n, "test")
    if n_eval + n_test >= n:
        raise LorakitError(f"eval ({n_eval}) and test ({n_test}) would leave nothing to train on ({n} records)",
                           field="eval")
    gid = group_ids(records, threshold=threshold, by_source=by_source)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(gid.tolist()):
        members.setdefault(g, []).append(i)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    assign = {"train": [], "eval": [], "test": []}
    counts = {"eval": 0, "test": 0}
    for g in order:
        size = len(members[g])
        if counts["test"] + size <= n_test:
            dest = "test"
        elif counts["eval"] + size <= n_eval:
            dest = "eval"
        else:
            dest = "train"
        if dest != "train":
            counts[dest] += size
        assign[dest] += members[g]
    splits = {k: [records[i] for i in sorted(v)] for k, v in assign.items()}
    return splits, gid


def split(path: str | Path, out_dir: str | Path, *, eval: float | int = 0.1, test: float | int = 0, seed: int = 0,
          threshold: float = 0.8, by_source: bool = True, fmt: str = "messages", columns: dict | None = None,
          dataset: str | None = None) -> SplitResult:
    """Read a dataset, split it, and write ``train.jsonl``, ``eval.jsonl`` (and ``test.jsonl``) to ``out_dir``."""
    records = read_records(path, columns=columns, dataset=dataset)
    if fmt == "messages" and kind_of(records) == "preference":  # messages cannot hold pairs: TRL's form can
        fmt = "preference"
    if len(records) < 2:
        raise LorakitError(f"{len(records)} record(s) cannot be split", file=path)
    splits, gid = split_records(records, eval=eval, test=test, seed=seed, threshold=threshold, by_source=by_source)
    out_dir = Path(out_dir)
    suffix = {"csv": ".csv", "tsv": ".tsv", "text": ".txt"}.get(fmt, ".jsonl")
    if Path(path).resolve() in {(out_dir / f"{name}{suffix}").resolve() for name in splits}:
        raise LorakitError("the split would overwrite the file it splits", file=path, field="out_dir",
                           hint="Choose another output folder")
    paths = {}
    for name, recs in splits.items():
        if name == "test" and not test:
            continue
        paths[name] = write_records(out_dir / f"{name}{suffix}", recs, fmt)
    sizes = np.bincount(np.unique(gid, return_inverse=True)[1])
    return SplitResult(paths, {k: len(splits[k]) for k in paths}, len(sizes), int(sizes.max()))


def parse_share(text: str, name: str = "eval") -> float | int:
    """'0.1' -> 0.1 (a ratio), '200' -> 200 (a count): what --eval and --test accept."""
    try:
        value = float(text)
    except ValueError:
        raise LorakitError(f"'{text}' is neither a ratio (0.1) nor a count (200)", field=name) from None
    return value if (value < 1 and value != 0) or not value.is_integer() else int(value)
