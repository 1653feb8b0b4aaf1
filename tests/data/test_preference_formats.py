"""Every kind of data people bring, read faithfully: a LLaMA-Factory data/ folder (files of the same shape as its
demo files, written here), TRL's preference and KTO forms, tool calls, multimodal refusal, alpaca round trips and
the encoding and flag defects of issue 12 (one test each)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.data.check import check
from lorakit.data.formats import parse_records, read_records, write_records
from lorakit.data.record import Conversation, Feedback, Preference
from lorakit.errors import LorakitError

runner = CliRunner()

TOOLS = [{"name": "query_fine", "description": "查询违章罚款", "parameters": {
    "type": "object", "properties": {"plate": {"type": "string"}}, "required": ["plate"]}}]


def _call(name="query_fine", args=None):
    return json.dumps({"name": name, "arguments": args or {"plate": "粤B12345"}}, ensure_ascii=False)


def _lf_folder(d):
    """A data/ folder shaped like LLaMA-Factory's: SFT, ranking, KTO, tool-call, multimodal, text and hub entries."""
    alpaca = [{"instruction": f"解释第{i}条", "input": "闯红灯" if i % 3 == 0 else "", "output": f"答案{i}"} for i in range(12)]
    identity = [{"instruction": "你是谁？", "input": "", "output": "我是 lorakit 训练的助手。"}] * 2
    dpo = [{"conversations": [{"from": "human", "value": f"酒驾第{i}次怎么罚？"}],
            "chosen": {"from": "gpt", "value": "依第九十一条，暂扣六个月驾驶证。"},
            "rejected": {"from": "gpt", "value": "罚五十元即可。"}} for i in range(6)]
    dpo_alpaca = [{"instruction": "超速怎么办？", "input": f"第{i}例", "chosen": "依法罚款并记分。", "rejected": "没事。"}
                  for i in range(4)]
    kto = [{"messages": [{"content": f"Question {i}?", "role": "user"}, {"content": f"Answer {i}.", "role": "assistant"}],
            "label": i % 3 != 0} for i in range(9)]
    glaive = [{"conversations": [{"from": "human", "value": "查一下粤B12345的罚款"},
                                 {"from": "function_call", "value": _call()},
                                 {"from": "observation", "value": json.dumps({"fine": 200})},
                                 {"from": "gpt", "value": "这辆车有200元罚款。"}],
               "tools": json.dumps(TOOLS, ensure_ascii=False)}] * 3
    mllm = [{"messages": [{"content": "<image>他们是谁？", "role": "user"}, {"content": "他们是球员。", "role": "assistant"}],
             "images": ["mllm_demo_data/1.jpg"]}]
    video = [{"messages": [{"content": "<video>视频里有什么？", "role": "user"}, {"content": "一辆车。", "role": "assistant"}],
              "videos": ["mllm_demo_data/1.mp4"]}]
    files = {"alpaca_zh_demo.json": alpaca, "identity.json": identity, "dpo_zh_demo.json": dpo,
             "dpo_alpaca.json": dpo_alpaca, "kto_en_demo.json": kto, "glaive_toolcall_zh_demo.json": glaive,
             "mllm_demo.json": mllm, "mllm_video_demo.json": video}
    for name, rows in files.items():
        (d / name).write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    (d / "c4_demo.jsonl").write_text("".join(json.dumps({"text": f"段落{i}"}, ensure_ascii=False) + "\n"
                                             for i in range(5)), encoding="utf-8")
    (d / "wiki_demo.txt").write_text("第一段。\n第二段。\n第三段。\n", encoding="utf-8")
    mm_tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    info = {
        "identity": {"file_name": "identity.json"},
        "alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json"},
        "glaive_toolcall_zh_demo": {"file_name": "glaive_toolcall_zh_demo.json", "formatting": "sharegpt",
                                    "columns": {"messages": "conversations", "tools": "tools"}},
        "mllm_demo": {"file_name": "mllm_demo.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "images": "images"}, "tags": mm_tags},
        "mllm_video_demo": {"file_name": "mllm_video_demo.json", "formatting": "sharegpt",
                            "columns": {"messages": "messages", "videos": "videos"}, "tags": mm_tags},
        "dpo_zh_demo": {"file_name": "dpo_zh_demo.json", "ranking": True, "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "dpo_alpaca": {"file_name": "dpo_alpaca.json", "ranking": True,
                       "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
        "kto_en_demo": {"file_name": "kto_en_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "messages", "kto_tag": "label"}, "tags": mm_tags},
        "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
        "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
        "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"},
    }
    (d / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return d / "dataset_info.json"


COUNTS = {"identity": (2, "alpaca", Conversation), "alpaca_zh_demo": (12, "alpaca", Conversation),
          "glaive_toolcall_zh_demo": (3, "sharegpt", Conversation), "dpo_zh_demo": (6, "preference", Preference),
          "dpo_alpaca": (4, "preference", Preference), "kto_en_demo": (9, "kto", Feedback),
          "c4_demo": (5, "text", Conversation), "wiki_demo": (3, "text", Conversation)}


def test_dataset_info_entry_by_entry(tmp_path):
    info = _lf_folder(tmp_path)
    for name, (n, fmt, kind) in COUNTS.items():
        p = parse_records(info, dataset=name)
        assert (len(p.records), p.fmt, p.errors) == (n, fmt, []), name
        assert all(isinstance(r, kind) for r in p.records), name
        assert parse_records(f"{info}:{name}").fmt == fmt  # FILE:NAME names the entry too
    kto = read_records(info, dataset="kto_en_demo")
    assert [r.label for r in kto].count(False) == 3  # the label is kept, never ignored
    call = read_records(info, dataset="glaive_toolcall_zh_demo")[0]
    assert [t.role for t in call.turns] == ["user", "assistant", "tool", "assistant"]
    assert call.turns[1].tool_calls[0]["function"] == {"name": "query_fine", "arguments": {"plate": "粤B12345"}}
    assert call.tools[0]["function"]["name"] == "query_fine"


def test_cli_reads_every_entry_without_traceback(tmp_path):
    info = _lf_folder(tmp_path)
    for name, (n, fmt, _) in COUNTS.items():
        to = {"preference": "preference", "kto": "kto"}.get(fmt, "messages")
        r = runner.invoke(app, ["data", "convert", str(info), str(tmp_path / f"{name}.out.jsonl"), "--to", to,
                                "--dataset", name])
        assert r.exit_code == 0 and f"wrote {n} " in r.output, (name, r.output)
        r = runner.invoke(app, ["data", "check", f"{info}:{name}"])
        assert r.exception is None or isinstance(r.exception, SystemExit), (name, r.exception)
        assert "Traceback" not in r.output
    for name in ("mllm_demo", "mllm_video_demo", "alpaca_en"):
        for cmd in (["convert", str(info), str(tmp_path / "x.jsonl"), "--to", "messages", "--dataset", name],
                    ["check", str(info), "--dataset", name]):
            r = runner.invoke(app, ["data", *cmd])
            assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["data", "check", str(info), "--dataset", "mllm_demo"])
    assert "multimodal" in r.output and "text-only" in r.output


def test_multimodal_detected_by_content_without_dataset_info(tmp_path):
    for row in ({"messages": [{"role": "user", "content": "<image>这是什么标志？"}, {"role": "assistant", "content": "禁停。"}]},
                {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                                           {"type": "text", "text": "这是什么？"}]},
                              {"role": "assistant", "content": "限速标志。"}]},
                {"instruction": "看图", "input": "", "output": "好", "images": ["a.png"]}):
        p = tmp_path / "mm.jsonl"
        p.write_text((json.dumps(row, ensure_ascii=False) + "\n") * 50, encoding="utf-8")
        with pytest.raises(LorakitError, match="multimodal") as e:
            check(p)
        assert "mm.jsonl:1" in str(e.value)


def test_preference_sharegpt_convert_is_not_user_only(tmp_path):
    """Was: 300 user-only records and 300 'wrong role order' from `convert --to messages`."""
    info = _lf_folder(tmp_path)
    src = tmp_path / "dpo_zh_demo.json"
    r = runner.invoke(app, ["data", "convert", str(src), str(tmp_path / "m.jsonl"), "--to", "messages"])
    assert r.exit_code == 2 and "preference" in r.output and "Write them as" in r.output
    rep = check(src)
    assert rep.ok and rep.stats["kind"] == "preference" and rep.counts()["role_order"] == 0
    for fmt, suffix in (("preference", ".jsonl"), ("sharegpt", ".json"), ("alpaca", ".json"), ("llamafactory", ".json")):
        out = tmp_path / f"p-{fmt}{suffix}"
        write_records(out, read_records(info, dataset="dpo_zh_demo"), fmt)
        back = read_records(tmp_path / "dataset_info.json", dataset=out.stem) if fmt == "llamafactory" else \
            read_records(out)
        assert [(b.prompt, b.chosen, b.rejected) for b in back] == \
            [(a.prompt, a.chosen, a.rejected) for a in read_records(src)], fmt


def test_trl_preference_forms(tmp_path):
    rows = [
        {"prompt": "酒驾怎么罚？", "chosen": "暂扣六个月。", "rejected": "罚五元。"},  # plain
        {"prompt": [{"role": "system", "content": "简洁"}, {"role": "user", "content": "超速？"}],
         "chosen": [{"role": "assistant", "content": "罚款。"}], "rejected": [{"role": "assistant", "content": "无事。"}]},
        {"chosen": [{"role": "user", "content": "醉驾？"}, {"role": "assistant", "content": "吊销。"}],  # implicit prompt
         "rejected": [{"role": "user", "content": "醉驾？"}, {"role": "assistant", "content": "警告。"}]},
    ]
    p = tmp_path / "trl.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recs = read_records(p)
    assert [r.prompt[-1].content for r in recs] == ["酒驾怎么罚？", "超速？", "醉驾？"]
    assert recs[1].system == "简洁" and [r.rejected[0].content for r in recs] == ["罚五元。", "无事。", "警告。"]
    assert recs[2].to_trl()["prompt"] == [{"role": "user", "content": "醉驾？"}]


def test_check_learns_preference_kto_and_tool_defects(tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = [{"prompt": "q1", "chosen": "同一个答案", "rejected": "同一个答案"},
            {"prompt": "q2", "chosen": "好答案", "rejected": "  "}]
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    c = check(p).counts()
    assert (c["same_pair"], c["empty"]) == (1, 1)
    k = tmp_path / "kto.jsonl"
    k.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "label": i < 9}) + "\n"
                         for i in range(10)), encoding="utf-8")
    rep = check(k)
    assert rep.stats["labels"] == {"desirable": 9, "undesirable": 1} and rep.counts()["label_balance"] == 1
    t = tmp_path / "tools.jsonl"
    base = {"role": "user", "content": "查罚款"}
    rows = [{"messages": [base, {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "query_fine", "arguments": "{plate: 粤B"}}]},
             {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "没有罚款。"}], "tools": TOOLS},
            {"conversations": [{"from": "human", "value": "查"}, {"from": "function_call", "value": _call("delete_all")},
                               {"from": "observation", "value": "ok"}, {"from": "gpt", "value": "好"}],
             "tools": json.dumps(TOOLS)},
            {"conversations": [{"from": "human", "value": "查"}, {"from": "function_call", "value": "not json"},
                               {"from": "observation", "value": "ok"}, {"from": "gpt", "value": "好"}]}]
    t.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    found = [f for f in check(t).findings if f.code == "tool_call"]
    assert [f.line for f in found] == [1, 2, 3]
    assert "does not parse as JSON" in found[0].message and "'delete_all'" in found[1].message


def test_alpaca_round_trips_are_lossless(tmp_path):
    info = _lf_folder(tmp_path)
    src = json.loads((tmp_path / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    recs = read_records(info, dataset="alpaca_zh_demo")
    write_records(tmp_path / "a.json", recs, "alpaca")
    write_records(tmp_path / "m.jsonl", recs, "messages")
    write_records(tmp_path / "b.json", read_records(tmp_path / "m.jsonl"), "alpaca")
    for out in ("a.json", "b.json"):
        back = json.loads((tmp_path / out).read_text(encoding="utf-8"))
        assert [(r["instruction"], r["input"], r["output"]) for r in back] == \
            [(r["instruction"], r["input"], r["output"]) for r in src], out
    assert read_records(tmp_path / "m.jsonl")[0].prompt == "解释第0条\n闯红灯"  # training still sees both


def test_dataset_info_with_forced_format_and_dataset_flag_errors(tmp_path):
    info = _lf_folder(tmp_path)
    for args in (["convert", str(info), str(tmp_path / "o.jsonl"), "--to", "messages", "--from", "alpaca"],
                 ["check", str(info), "--from", "alpaca"], ["check", str(info), "--format", "alpaca"]):
        r = runner.invoke(app, ["data", *args])
        assert r.exit_code == 2 and "dataset_info.json" in r.output and "--dataset" in r.output, r.output
    short = tmp_path / "short" / "dataset_info.json"  # a two-letter name used to unpack and garble the error
    short.parent.mkdir()
    short.write_text(json.dumps({"ab": {"file_name": "x.json"}}), encoding="utf-8")
    r = runner.invoke(app, ["data", "check", str(short), "--from", "alpaca"])
    assert r.exit_code == 2 and "LLaMA-Factory dataset_info.json" in r.output
    r = runner.invoke(app, ["data", "check", str(info)])
    assert r.exit_code == 2 and "--dataset" in r.output
    with pytest.raises(LorakitError, match="names an entry"):
        read_records(tmp_path / "alpaca_zh_demo.json", dataset="nosuch")
    with pytest.raises(LorakitError, match="no dataset named 'nosuch'"):
        read_records(f"{info}:nosuch")


def test_encoding_errors_are_named_right(tmp_path):
    row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n"
    p = tmp_path / "u16.jsonl"
    p.write_bytes((row * 3).encode("utf-16-le"))
    with pytest.raises(LorakitError, match="UTF-16 text \\(UTF-16LE, no byte-order mark\\)"):
        read_records(p)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes((row * 2 + '{"text": "中文').encode("utf-8")[:-2])
    with pytest.raises(LorakitError, match="cut off") as e:
        read_records(cut)
    assert "GBK" not in str(e.value) and "cut.jsonl:3" in str(e.value)
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes('{"text": "中文内容"}\n'.encode("gb18030"))
    with pytest.raises(LorakitError, match="GB18030"):
        read_records(gbk)
    bad = tmp_path / "unterminated.jsonl"
    bad.write_text('{"text": "abc\n', encoding="utf-8")
    rep = check(bad)
    assert "starting at column" in rep.findings[0].message and "at at" not in rep.findings[0].message


def test_wrapped_records_are_read(tmp_path):
    """lawyer-llama's legal_advice.json: a list of one-element lists of alpaca records."""
    p = tmp_path / "legal_advice.json"
    p.write_text(json.dumps([[{"instruction": f"问{i}", "input": "", "output": f"答{i}"}] for i in range(4)],
                            ensure_ascii=False, indent=1), encoding="utf-8")
    recs = read_records(p)
    assert [r.prompt for r in recs] == ["问0", "问1", "问2", "问3"] and recs[1].source["line"] > recs[0].source["line"]


def test_openai_tool_messages_round_trip(tmp_path):
    row = {"messages": [{"role": "user", "content": "查粤B12345"},
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"id": "c1", "type": "function",
                             "function": {"name": "query_fine", "arguments": '{"plate": "粤B12345"}'}}]},
                        {"role": "tool", "content": '{"fine": 200}'},
                        {"role": "assistant", "content": "有200元罚款。"}],
           "tools": [{"type": "function", "function": TOOLS[0]}]}
    p = tmp_path / "oa.jsonl"
    p.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    conv = read_records(p)[0]
    assert conv.turns[1].tool_calls[0]["function"]["arguments"] == {"plate": "粤B12345"}
    for fmt in ("messages", "sharegpt"):
        write_records(tmp_path / f"o.{fmt}.jsonl", [conv], fmt)
        back = read_records(tmp_path / f"o.{fmt}.jsonl")[0]
        assert [(t.role, t.content) for t in back.turns] == [(t.role, t.content) for t in conv.turns]
        assert back.turns[1].tool_calls[0]["function"] == conv.turns[1].tool_calls[0]["function"]
        assert back.tools == conv.tools
    assert check(p).ok
