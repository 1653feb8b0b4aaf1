"""Finding and chunking documents for the index; mapping short document names to indexed titles."""
from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.errors import LorakitError
from lorakit.rag.ingest import find_documents, load_chunks, normalize_title, resolve_document

from rag_paths import LAW_2021


def test_folder_is_chunked_by_article(laws):
    chunks = load_chunks([laws])
    files = {c.file for c in chunks}
    assert len(files) == 8
    law = [c for c in chunks if c.file.endswith(LAW_2021)]
    assert len(law) == 124 and [c.number for c in law] == list(range(1, 125))
    art91 = law[90]
    assert art91.article == "第九十一条" and art91.text.startswith("第九十一条") and "酒" in art91.text
    assert art91.chapter and art91.chapter.startswith("第七章")


def test_document_without_articles_is_chunked_by_heading(tmp_path):
    doc = tmp_path / "guide.md"
    doc.write_text("# Parking guide\n\n## Where\n\nOnly in marked bays.\n\n## How long\n\nTwo hours at most.\n",
                   encoding="utf-8")
    chunks = load_chunks([doc])
    assert [(c.article, c.text) for c in chunks] == [("Where", "Only in marked bays."),
                                                      ("How long", "Two hours at most.")]


def test_bad_inputs_say_which_file(tmp_path):
    with pytest.raises(LorakitError, match="no such document"):
        find_documents([tmp_path / "nope.md"])
    with pytest.raises(LorakitError, match="no documents given"):
        find_documents([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LorakitError, match="holds no .md"):
        find_documents([tmp_path / "empty"])
    blank = tmp_path / "blank.md"
    blank.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        load_chunks([blank])
    assert "blank.md" in str(e.value) and "empty" in str(e.value)
    only_title = tmp_path / "title.md"
    only_title.write_text("# Just a title\n", encoding="utf-8")
    with pytest.raises(LorakitError, match="no text to index"):
        load_chunks([only_title])


def test_files_are_not_indexed_twice(laws):
    assert len(find_documents([laws, laws / LAW_2021])) == 8


@pytest.mark.parametrize("name,expected", [
    ("中华人民共和国道路交通安全法", "中华人民共和国道路交通安全法"),
    ("《道路交通安全法》", "中华人民共和国道路交通安全法"),  # the law, not its implementing regulations
    ("道路交通安全法实施条例", "中华人民共和国道路交通安全法实施条例"),
    ("记分管理办法", "道路交通安全违法行为记分管理办法"),
    ("最高法交通肇事刑事案件司法解释", "spc_traffic_crime"),  # the full titles are looked up in the texts
    ("最高法道路交通事故损害赔偿司法解释", "spc_accident_compensation"),
    ("中华人民共和国刑法", None),
    ("", None),
])
def test_resolve_document(laws, name, expected):
    chunks = load_chunks([laws])
    titles = sorted({c.document for c in chunks})
    if expected and expected.startswith("spc_"):
        expected = next(c.document for c in chunks if Path(c.file).name.startswith(expected))
    assert resolve_document(name, titles) == expected


def test_normalize_title():
    assert normalize_title("《中华人民共和国 道路交通安全法》") == "道路交通安全法"
    assert normalize_title("Road Traffic Safety Law") == "roadtrafficsafetylaw"
