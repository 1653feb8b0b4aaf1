"""`data check` finds every seeded problem at its line and nothing else; a clean file gives nothing."""
from __future__ import annotations

import hashlib
import json

import pytest

from lorakit.data.check import check, find_pii, fix, id_check_digit_ok, language, mask_pii, repeats_question, width_problem
from lorakit.data.formats import read_records, write_records
from lorakit.data.report import print_report, write_json_report, write_report
from lorakit.errors import LorakitError

SEEDED = {(3, "parse"), (4, "role_order"), (5, "empty"), (6, "duplicate"), (8, "near_duplicate"), (9, "leak"),
          (10, "near_leak"), (11, "truncated"), (12, "no_supervised"), (13, "repeats_question"), (14, "pii"),
          (15, "pii"), (16, "pii"), (17, "pii"), (18, "language_mix"), (19, "width")}
ERRORS = {"parse", "role_order", "empty", "leak", "no_supervised"}


@pytest.fixture(scope="module")
def seeded_report(tokenizer, fixtures):
    return check(fixtures / "seeded.jsonl", tokenizer=tokenizer, model="tiny", cutoff=384,
                 eval_path=fixtures / "eval.jsonl")


def test_seeded_file_finds_each_problem_and_nothing_else(seeded_report, fixtures):
    found = {(f.line, f.code) for f in seeded_report.findings}
    assert found == SEEDED
    assert all(f.file == str(fixtures / "seeded.jsonl") for f in seeded_report.findings)
    assert {f.code for f in seeded_report.errors} == ERRORS and not seeded_report.ok
    by = {(f.line, f.code): f for f in seeded_report.findings}
    assert by[(6, "duplicate")].related["line"] == 2
    assert by[(8, "near_duplicate")].related["line"] == 7
    assert by[(9, "leak")].related == {"file": str(fixtures / "eval.jsonl"), "line": 1}
    assert by[(10, "near_leak")].related["line"] == 2
    assert by[(5, "empty")].field == "assistant turn 1"
    assert "13812345678" in by[(14, "pii")].message and "11010519491231002X" in by[(15, "pii")].message


def test_clean_file_finds_nothing(tokenizer, fixtures):
    r = check(fixtures / "clean.jsonl", tokenizer=tokenizer, model="tiny", cutoff=384, eval_path=fixtures / "eval.jsonl")
    assert r.findings == [] and r.ok
    assert r.stats["parsed"] == 10 and r.stats["languages"]["en"] == 4 and r.stats["tokens"]["max"] < 384


@pytest.mark.parametrize("name", ["alpaca.json", "sharegpt.jsonl", "messages.jsonl", "qa.csv", "qa.tsv", "corpus.txt"])
def test_realistic_fixtures_are_clean(tokenizer, fixtures, name):
    r = check(fixtures / name, tokenizer=tokenizer, model="tiny", cutoff=512)
    assert [(f.line, f.code, f.message) for f in r.findings] == []


def test_without_model_token_checks_are_skipped(fixtures):
    r = check(fixtures / "seeded.jsonl", eval_path=fixtures / "eval.jsonl")
    assert {(f.line, f.code) for f in r.findings} == SEEDED - {(11, "truncated"), (12, "no_supervised")}
    with pytest.raises(LorakitError, match="--cutoff needs --model"):
        check(fixtures / "seeded.jsonl", cutoff=100)


def test_leakage_across_formats(tmp_path, fixtures):
    ev = read_records(fixtures / "eval.jsonl")
    write_records(tmp_path / "eval.csv", ev, "csv")
    r = check(fixtures / "seeded.jsonl", eval_path=tmp_path / "eval.csv")
    assert {(f.line, f.code) for f in r.findings if "leak" in f.code} == {(9, "leak"), (10, "near_leak")}


def test_malformed_files_raise(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"\x00\x01binary")
    with pytest.raises(LorakitError, match="binary"):
        check(p)
    p.write_text("")
    with pytest.raises(LorakitError, match="empty"):
        check(p)


def test_reports(seeded_report, tmp_path):
    md = write_report(seeded_report, tmp_path / "report.md")
    assert (tmp_path / "report.lengths.png").read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert "report.lengths.png" in text and "seeded.jsonl:12" in text
    html = write_report(seeded_report, tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "no_supervised" in html
    data = json.loads(write_json_report(seeded_report, tmp_path / "r.json").read_text())
    assert data["ok"] is False and data["errors"] == 5 and data["counts"]["pii"] == 4
    assert {(f["line"], f["code"]) for f in data["findings"]} == SEEDED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "report.html", "report.lengths.png", "report.md"]


def test_terminal_summary_measures_chinese_width(seeded_report):
    from rich.console import Console
    con = Console(record=True, width=100)
    print_report(seeded_report, con)
    out = con.export_text()
    assert "5 error(s), 11 warning(s)" in out
    table_lines = [ln for ln in out.splitlines() if ln.startswith("│")]
    from rich.cells import cell_len
    assert len({cell_len(ln) for ln in table_lines[:13]}) == 1  # borders line up despite CJK text


def test_fix_writes_clean_copy_and_never_touches_input(seeded_report, fixtures, tmp_path, tokenizer):
    src = fixtures / "seeded.jsonl"
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    res = fix(seeded_report, tmp_path / "fixed.jsonl", mask=True)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    assert res.dropped == {"role_order": 1, "empty": 1, "duplicate": 1, "near_duplicate": 1, "leak": 1,
                           "near_leak": 1, "no_supervised": 1}
    assert res.kept == 19 - 7 and res.masked == 4
    again = check(tmp_path / "fixed.jsonl", tokenizer=tokenizer, model="tiny", cutoff=384,
                  eval_path=fixtures / "eval.jsonl")
    assert again.ok and {f.code for f in again.findings} == {"truncated", "repeats_question", "language_mix", "width"}
    text = (tmp_path / "fixed.jsonl").read_text()
    assert "138****5678" in text and "110105********002X" in text and "a***@example.com" in text and "粤B****5" in text
    with pytest.raises(LorakitError, match="not the input"):
        fix(seeded_report, src)


def test_fix_trims_whitespace(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"instruction": "  问题 ", "output": "答案\n"}, ensure_ascii=False) + "\n")
    r = check(p)
    res = fix(r, tmp_path / "b.jsonl")
    assert res.trimmed == 1 and read_records(tmp_path / "b.jsonl")[0].prompt == "问题"


# ---------------------------------------------------------------- content rules
def test_resident_id_check_digit():
    assert id_check_digit_ok("11010519491231002X")
    assert not id_check_digit_ok("110105194912310021")
    assert find_pii("号码110105194912310021有误") == []  # wrong check digit: not an ID number


def test_pii_patterns_and_no_false_positives():
    assert find_pii("电话：+86 139-1234-5678") == [("mobile number", "+86 139-1234-5678")]
    assert find_pii("编号12345678901234") == []
    assert find_pii("新能源车牌京AD12345很好认") == [("licence plate", "京AD12345")]
    assert find_pii("车牌苏E·8K2M1被查") == [("licence plate", "苏E·8K2M1")]
    assert find_pii("根据第九十一条，罚款2000元，扣12分，时速120公里，2021年4月29日修正") == []
    assert find_pii("京A区域的道路") == []
    assert mask_pii("打13912345678") == "打139****5678"


def test_language_and_width_rules():
    assert language("红灯停。") is None  # too short to tell
    assert language("机动车遇到红灯时应当停车等候，绿灯亮起后再通行。") == "zh"
    assert language("使用ETC通道可以不停车缴费，节省排队的时间。") == "zh"
    assert language("Drivers must stop at a red light and wait.") == "en"
    assert width_problem("红灯停,绿灯行。") is not None
    assert width_problem("红灯停，绿灯行？") is None
    assert width_problem("Stop at the light，then go.") is not None
    assert width_problem("限速１２０公里") is not None
    assert width_problem("依据《道路交通安全法》第91条: 处罚") is None


def test_repeats_question_rule():
    assert repeats_question("驾驶证到期了怎么换证？", "驾驶证到期了怎么换证。")
    assert repeats_question("What is a learner plate?", "What is a learner plate")
    assert not repeats_question("驾驶证到期了怎么换证？", "驾驶证到期了怎么换证？到期前九十天内带身份证到车管所申请即可。")


def test_check_and_fix_a_llamafactory_registration(tmp_path, fixtures):
    import shutil
    d = tmp_path / "lf"
    shutil.copytree(fixtures / "llamafactory", d)
    rows = json.loads((d / "law_qa.json").read_text())
    (d / "law_qa.json").write_text(json.dumps(rows + rows[:1], ensure_ascii=False))
    info = {"law_qa": json.loads((d / "dataset_info.json").read_text())["law_qa"]}
    (d / "dataset_info.json").write_text(json.dumps(info))
    r = check(d / "dataset_info.json")
    assert [f.code for f in r.findings] == ["duplicate"] and r.findings[0].file == str(d / "law_qa.json")
    res = fix(r, tmp_path / "fixed.jsonl")
    assert res.kept == 2 and res.dropped == {"duplicate": 1}


def test_questions_about_one_article_are_not_near_duplicates(tmp_path):
    answer = ("根据示例规定第三条：驾驶人在雨天行车应当降低车速，保持足够的安全距离，并开启近光灯；"
              "遇到积水路段要提前观察水深，不要猛踩油门，涉水后要轻踩几次制动踏板，让刹车尽快恢复正常。")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}],
             "source": {"document": "示例规定", "article": "第三条"}} for q in ("第三条讲了什么？", "第三条是怎么规定的？")]
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    assert check(p).findings == []
    for r in rows:
        del r["source"]
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    assert [(f.code, f.line) for f in check(p).findings] == [("near_duplicate", 2)]
