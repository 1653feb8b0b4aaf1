"""Reading every format as its users write it, converting between all of them, and clear errors on bad files."""
from __future__ import annotations

import json

import pytest

from lorakit.data.formats import FORMATS, detect_format, parse_records, read_records, write_records
from lorakit.errors import LorakitError


def test_alpaca_json_array(fixtures):
    recs = read_records(fixtures / "alpaca.json")
    assert detect_format(fixtures / "alpaca.json") == "alpaca"
    assert len(recs) == 3
    assert recs[0].system.startswith("你是")
    assert recs[0].prompt == "酒后开车会有什么后果？"
    assert recs[1].prompt.startswith("Summarise") and "\nA driver" in recs[1].prompt  # instruction + input
    assert [t.role for t in recs[2].turns] == ["user", "assistant", "user", "assistant"]
    assert recs[2].meta == {"keywords": ["实习期", "驾驶证"]}
    assert [r.source["line"] for r in recs] == [2, 8, 13]
    assert recs[0].source["file"].endswith("alpaca.json")


def test_sharegpt_odd_role_names(fixtures):
    recs = read_records(fixtures / "sharegpt.jsonl")
    assert detect_format(fixtures / "sharegpt.jsonl") == "sharegpt"
    assert recs[0].system == "You are a patient driving instructor."
    assert [t.role for t in recs[1].turns] == ["user", "assistant", "user", "assistant"]
    assert recs[1].meta == {"id": "faq-0002"}
    assert recs[2].system == "回答时请注明依据。"
    assert recs[2].source == {"document": "道路交通安全法", "article": "第八十九条",
                              "file": str(fixtures / "sharegpt.jsonl"), "line": 3}


def test_messages_canonical(fixtures):
    recs = read_records(fixtures / "messages.jsonl")
    assert detect_format(fixtures / "messages.jsonl") == "messages"
    assert recs[0].source["article"] == "第九十一条" and recs[0].meta["keywords"] == ["醉酒", "吊销"]
    assert recs[1].prompt == "Can I use my phone while stopped at a red light?"  # content parts joined
    assert len(recs[2].turns) == 4 and recs[2].meta == {"meta_note": "multi-turn"}


def test_plain_text_paragraphs(fixtures):
    recs = read_records(fixtures / "corpus.txt")
    assert detect_format(fixtures / "corpus.txt") == "text"
    assert len(recs) == 3
    assert [t.role for t in recs[0].turns] == ["assistant"]
    assert recs[0].text().count("\n") == 1 and recs[1].source["line"] == 4


def test_plain_text_one_per_line(tmp_path):
    p = tmp_path / "lines"
    p.write_text("第一段内容。\nSecond line of text.\n第三行。\n", encoding="utf-8")
    assert [r.text() for r in read_records(p)] == ["第一段内容。", "Second line of text.", "第三行。"]


def test_csv_and_tsv(fixtures):
    recs = read_records(fixtures / "qa.csv")
    assert len(recs) == 3 and recs[0].prompt == "电动自行车可以载人吗？"
    assert recs[1].answer.count("\n") == 1  # quoted multi-line cell
    assert recs[1].meta == {"category": "markings"}
    assert [r.source["line"] for r in recs] == [2, 3, 5]
    tsv = read_records(fixtures / "qa.tsv")
    assert detect_format(fixtures / "qa.tsv") == "tsv" and tsv[1].answer.startswith("是的")


def test_csv_detected_by_content_and_column_mapping(tmp_path):
    p = tmp_path / "data.dat"
    p.write_text("q,a\n红灯能右转吗？,没有专门信号灯控制时，在不妨碍其他车辆和行人的情况下可以右转。\n", encoding="utf-8")
    recs = read_records(p, "csv", columns={"prompt": "q", "response": "a"})
    assert recs[0].answer.startswith("没有")
    with pytest.raises(LorakitError) as e:
        read_records(p, "csv", columns={"prompt": "q", "response": "reply"})
    assert "reply" in str(e.value) and ":1" in str(e.value)


def test_llamafactory_dataset_info(fixtures):
    info = fixtures / "llamafactory" / "dataset_info.json"
    assert detect_format(info) == "llamafactory"
    qa = read_records(info, dataset="law_qa")
    assert qa[0].system == "你是一名交通法规顾问。" and qa[1].prompt.endswith("\nhazard warning triangle")
    chat = read_records(info, dataset="law_chat")
    assert chat[0].system == "Be polite and brief." and [t.role for t in chat[0].turns] == ["user", "assistant"]
    corpus = read_records(info, dataset="law_corpus")
    assert [t.role for t in corpus[0].turns] == ["assistant"]
    with pytest.raises(LorakitError, match="several datasets"):
        read_records(info)


def _content(recs):
    return [(r.system, [(t.role, t.content) for t in r.turns],
             {k: v for k, v in r.source.items() if k not in ("file", "line")}, r.meta) for r in recs]


@pytest.mark.parametrize("src", ["alpaca.json", "sharegpt.jsonl", "messages.jsonl", "qa.csv", "qa.tsv"])
@pytest.mark.parametrize("fmt", ["messages", "alpaca", "sharegpt", "csv", "tsv", "llamafactory"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_convert_round_trip_chat(fixtures, tmp_path, src, fmt, suffix):
    recs = read_records(fixtures / src)
    out = tmp_path / ("out" + ({"csv": ".csv", "tsv": ".tsv"}.get(fmt, suffix)))
    write_records(out, recs, fmt)
    back = read_records(tmp_path / "dataset_info.json", dataset="out") if fmt == "llamafactory" else read_records(out)
    assert _content(back) == _content(recs)
    if fmt == "llamafactory":
        assert json.loads((tmp_path / "dataset_info.json").read_text())["out"]["formatting"] == "sharegpt"


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "text", "csv"])
def test_convert_round_trip_text(fixtures, tmp_path, fmt):
    recs = read_records(fixtures / "corpus.txt")
    for out in (tmp_path / f"a.{fmt}.jsonl", tmp_path / "a.txt") if fmt == "text" else (tmp_path / f"a.{fmt}",):
        write_records(out, recs, fmt)
        assert [r.text() for r in read_records(out)] == [r.text() for r in recs]


def test_alpaca_cannot_hold_plain_text(fixtures, tmp_path):
    with pytest.raises(LorakitError, match="plain text"):
        write_records(tmp_path / "x.json", read_records(fixtures / "corpus.txt"), "alpaca")


# ---------------------------------------------------------------- malformed files
def _jsonl(n_good: int, bad: str) -> str:
    good = json.dumps({"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]},
                      ensure_ascii=False)
    return "\n".join([good] * n_good + [bad, good]) + "\n"


def test_bad_json_on_line_7(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text(_jsonl(6, '{"messages": [{"role": "user", "content": "x"}'), encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert e.value.line == 7 and f"{p}:7" in e.value.render() and "not valid JSON" in e.value.render()
    parsed = parse_records(p)
    assert len(parsed.records) == 7 and [x.line for x in parsed.errors] == [7]


def test_bad_json_in_array_names_line(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert e.value.line == 3


def test_wrong_field_types(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(_jsonl(2, '{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "a"}]}'))
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert e.value.line == 3 and e.value.field == "messages[0].content" and "got a number" in e.value.message
    a = tmp_path / "a.jsonl"
    a.write_text('{"instruction": "q", "output": ["a", "b"]}\n')
    with pytest.raises(LorakitError) as e:
        read_records(a)
    assert e.value.field == "output" and "list" in e.value.message
    s = tmp_path / "s.jsonl"
    s.write_text('{"conversations": "hello"}\n')
    with pytest.raises(LorakitError, match="expected a list of turns"):
        read_records(s)


def test_unknown_role_names_the_field(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"conversations": [{"from": "narrator", "value": "x"}]}\n')
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert e.value.field == "conversations[0].from" and "narrator" in e.value.message


def test_csv_missing_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("question,category\n问题一,分类\n", encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert "missing column" in e.value.message and e.value.line == 1 and "question, category" in e.value.hint


def test_csv_short_row(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("question,answer,category\n问题一,答案,分类\n问题二,答案\n", encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert e.value.line == 3 and "2 column(s)" in e.value.message


@pytest.mark.parametrize("content,words", [(b"", "empty"), (b"  \n\n", "empty"),
                                           (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
                                           (b"abc\x00\x01\x02def", "binary"),
                                           (b"PK\x03\x04rest", "zip"),
                                           ("中文".encode("gbk") + b"\n", "UTF-8")])
def test_file_level_errors(tmp_path, content, words):
    p = tmp_path / "data.jsonl"
    p.write_bytes(content)
    with pytest.raises(LorakitError) as e:
        read_records(p)
    assert words in e.value.render() and str(p) in e.value.render()


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(LorakitError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(LorakitError, match="unknown format"):
        read_records(tmp_path / "nope.jsonl", "parquet")
    assert "llamafactory" in FORMATS


def test_bom_and_crlf(tmp_path):
    p = tmp_path / "w.jsonl"
    p.write_bytes("\ufeff".encode() + b'{"instruction": "q", "output": "a"}\r\n{"instruction": "q2", "output": "a2"}\r\n')
    assert [r.answer for r in read_records(p)] == ["a", "a2"]
