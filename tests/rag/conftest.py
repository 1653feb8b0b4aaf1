"""Fixtures for the RAG tests: indexes over the real traffic-law texts in ../shared (read at run time, never
copied into the repository), a small dense index, and a tiny model with a two-step adapter."""
from __future__ import annotations

from pathlib import Path

import pytest

from rag_paths import CRIME_2000, LAW_2021, LAWS


@pytest.fixture(scope="session")
def laws() -> Path:
    if not (LAWS / LAW_2021).is_file():
        pytest.skip(f"the shared law texts are not at {LAWS}")
    return LAWS


@pytest.fixture(scope="session")
def bm25_index(laws, tmp_path_factory):
    """BM25 over all eight law texts (about a second)."""
    from lorakit.rag.index import build_index
    return build_index([laws], tmp_path_factory.mktemp("rag") / "laws-bm25", dense=False)


@pytest.fixture(scope="session")
def small_laws(laws, tmp_path_factory) -> Path:
    """A folder with two short documents cut from the real texts at run time: articles 86–95 of the 2021 road
    traffic safety law (drunk driving is Article 91) and the 2000 traffic-crime interpretation (9 articles)."""
    from lorakit.data.build import chunk_articles
    out = tmp_path_factory.mktemp("small_laws")
    law = [c for c in chunk_articles(laws / LAW_2021) if 86 <= c.number <= 95]
    (out / "law_part.md").write_text(f"# {law[0].document}\n\n" + "\n\n".join(c.text for c in law) + "\n",
                                     encoding="utf-8")
    crime = chunk_articles(laws / CRIME_2000)
    (out / "crime.md").write_text(f"# {crime[0].document}\n\n" + "\n\n".join(c.text for c in crime) + "\n",
                                  encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def dense_index(small_laws, tmp_path_factory):
    """BM25 + e5 embeddings over the 19 chunks of `small_laws` (a few seconds of embedding)."""
    from lorakit.rag.index import build_index, dense_unavailable
    if dense_unavailable():
        pytest.skip(dense_unavailable())
    return build_index([small_laws], tmp_path_factory.mktemp("rag") / "small-dense", dense=True)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter trained for two steps on the demo data over the tiny random model."""
    from lorakit.config import TrainConfig
    from lorakit.quickstart import demo_file
    from lorakit.train.recipe import train
    runs = tmp_path_factory.mktemp("rag_runs")
    res = train(TrainConfig(model=str(tiny_model), data=str(demo_file("train.jsonl")), max_steps=2, precision="fp32",
                            runs_dir=str(runs), name="tiny-ft", save_steps=1000, batch_size=4, max_length=256))
    return res.run_dir
