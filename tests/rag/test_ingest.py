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


# ============================================================================ the not-in-the-index rule
from lorakit.rag.ingest import source_chunks  # noqa: E402


def _more(laws) -> Path:
    more = laws.parent / "laws-more"
    if not more.is_dir():
        pytest.skip(f"the shared law texts are not at {more}")
    return more


@pytest.fixture(scope="module")
def traffic_chunks(laws):
    return load_chunks([laws])


@pytest.fixture(scope="module")
def all_chunks(laws, traffic_chunks):
    return traffic_chunks + load_chunks([_more(laws)])


def _titles(chunks) -> list[str]:
    return list(dict.fromkeys(c.document for c in chunks))


def _title_of(chunks, file_prefix: str) -> str:
    return next(c.document for c in chunks if Path(c.file).name.startswith(file_prefix))


def test_the_two_folders_hold_the_titles_these_tests_name(traffic_chunks, all_chunks):
    traffic, both = set(_titles(traffic_chunks)), set(_titles(all_chunks))
    assert {"机动车交通事故责任强制保险条例", "机动车驾驶证申领和使用规定", "中华人民共和国道路交通安全法"} <= traffic
    assert {"工伤保险条例", "机动车登记规定", "中华人民共和国刑法"} <= both - traffic


@pytest.mark.parametrize("name,traffic,both", [
    # not in the traffic index: never the closest-looking title (强制保险条例, 驾驶证申领和使用规定)
    ("工伤保险条例", None, "工伤保险条例"),
    ("机动车登记规定", None, "机动车登记规定"),
    ("刑法", None, "中华人民共和国刑法"),
    ("《中华人民共和国刑法》", None, "中华人民共和国刑法"),
    # abbreviations of indexed titles
    ("道交法", "中华人民共和国道路交通安全法", "中华人民共和国道路交通安全法"),
    ("交强险条例", "机动车交通事故责任强制保险条例", "机动车交通事故责任强制保险条例"),
    ("最高法交通肇事刑事案件司法解释", "spc_traffic_crime", "spc_traffic_crime"),
])
def test_resolve_document_over_the_traffic_folder_and_both(traffic_chunks, all_chunks, name, traffic, both):
    def full(t):
        return _title_of(traffic_chunks, t) if t and t.startswith("spc_") else t

    assert resolve_document(name, _titles(traffic_chunks)) == full(traffic)
    assert resolve_document(name, _titles(all_chunks)) == full(both)


def test_unindexed_laws_are_not_mapped_to_a_similar_title(traffic_chunks):
    titles = _titles(traffic_chunks)
    assert resolve_document("工伤保险条例", titles) != "机动车交通事故责任强制保险条例"
    assert resolve_document("机动车登记规定", titles) != "机动车驾驶证申领和使用规定"
    assert resolve_document("机动车驾驶证申领和使用规定", titles) == "机动车驾驶证申领和使用规定"


def test_abbreviates():
    from lorakit.rag.ingest import _abbreviates
    assert _abbreviates("道交法", "道路交通安全法")
    assert _abbreviates("记分办法", "道路交通安全违法行为记分管理办法")
    assert not _abbreviates("道交法", "道路交通安全法实施条例")  # another kind of instrument
    assert not _abbreviates("交道法", "道路交通安全法")  # characters out of order
    assert not _abbreviates("刑法", "中华人民共和国刑法")  # two characters are too few to abbreviate
    assert not _abbreviates("工伤保险条例", "机动车交通事故责任强制保险条例")  # 工 and 伤 are not in it


def test_source_chunks_says_why_nothing_matched(traffic_chunks, all_chunks):
    injury = {"document": "工伤保险条例", "article": "第十四条"}
    ids, title, why = source_chunks(injury, traffic_chunks)
    assert ids == [] and title is None and "not in the index" in why and "工伤保险条例" in why
    ids, title, why = source_chunks(injury, all_chunks)
    assert title == "工伤保险条例" and why is None and len(ids) == 1
    assert all_chunks[ids[0]].document == "工伤保险条例" and all_chunks[ids[0]].number == 14
    ids, title, why = source_chunks({"document": "机动车登记规定", "article": "第五条"}, traffic_chunks)
    assert ids == [] and title is None and "not in the index" in why
    ids, title, why = source_chunks({"document": "道交法", "article": "第九百条"}, traffic_chunks)
    assert ids == [] and title == "中华人民共和国道路交通安全法" and "has no 第九百条" in why
    assert "not in the index" not in why
    ids, title, why = source_chunks({"document": "道交法", "article": "第九十一条"}, traffic_chunks)
    assert why is None and [traffic_chunks[i].number for i in ids] == [91]
    assert traffic_chunks[ids[0]].file.endswith(LAW_2021)
    assert source_chunks({"document": "道交法"}, traffic_chunks)[2] == "no source.document and source.article"
    assert source_chunks(None, traffic_chunks)[2] == "no source.document and source.article"


def test_recall_leaves_unindexed_sources_out(bm25_index, tmp_path):
    import json

    from lorakit.evaluate.compare import load_eval_records
    from lorakit.rag.compare import retrieval_recall
    from lorakit.rag.retrieve import Recipe

    from rag_paths import demo_eval
    extra = [("上下班途中被车撞了算工伤吗？", {"document": "工伤保险条例", "article": "第十四条"}),
             ("新买的车多久内要上牌？", {"document": "机动车登记规定", "article": "第五条"}),
             ("道交法第九百条怎么规定？", {"document": "道交法", "article": "第九百条"})]
    data = tmp_path / "mixed.jsonl"
    lines = demo_eval().read_text(encoding="utf-8").splitlines()
    lines += [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "……"}],
                          "source": s}, ensure_ascii=False) for q, s in extra]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipes = [Recipe(mode="bm25", learned=False)]
    ret = retrieval_recall(bm25_index, load_eval_records(data), recipes=recipes)
    alone = retrieval_recall(bm25_index, load_eval_records(demo_eval()), recipes=recipes)
    assert ret.total == 48 and ret.matched == alone.matched == 45
    assert len(ret.unmatched) == 3
    assert ret.unmatched[0].startswith(extra[0][0]) and "not in the index" in ret.unmatched[0]
    assert "not in the index" in ret.unmatched[1] and "has no 第九百条" in ret.unmatched[2]
    for k in ("recall@1", "recall@3", "recall@5", "mrr"):  # the three are left out of recall, not counted as misses
        assert ret.modes["bm25"][k] == alone.modes["bm25"][k]
    assert "工伤保险条例" not in ret.mappings and "机动车登记规定" not in ret.mappings
    assert ret.mappings["道交法"] == "中华人民共和国道路交通安全法"
    tail = ret.per_record[-3:]
    assert [r["target"] for r in tail] == [None, None, None] and "not in the index" in tail[0]["why"]
    assert all(r["target"] for r in ret.per_record[:45])
