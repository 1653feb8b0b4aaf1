"""Building instruction data from the law texts: article chunking, templates, model generation, resume."""
from __future__ import annotations

import json
import re
import threading

import pytest
from fastapi import Request  # at module level: FastAPI resolves the handler's string annotations here

from lorakit.data.build import (build, chinese_numeral_to_int, chunk_articles, chunk_document, cites_missing_article,
                                endpoint_generator, int_to_chinese_numeral, parse_pairs, template_pairs)
from lorakit.data.check import check
from lorakit.data.formats import read_records
from lorakit.errors import LorakitError

LAW = "road_traffic_safety_law_2021.md"
EXPECTED_ARTICLES = {"road_traffic_safety_law_2021.md": 124, "road_traffic_safety_law_regulations_2017.md": 115,
                     "driving_license_rules_2021.md": 111, "violation_points_rules_2021.md": 37,
                     "accident_handling_procedure_2018.md": 114, "compulsory_insurance_regulations_2019.md": 46,
                     "spc_accident_compensation_interpretation_2020.md": 26,
                     "spc_traffic_crime_interpretation_2000.md": 9}


@pytest.mark.parametrize("text,value", [("一", 1), ("十", 10), ("十一", 11), ("二十", 20), ("九十一", 91),
                                        ("一百", 100), ("一百零三", 103), ("一百一十", 110), ("一百二十四", 124),
                                        ("两千零五", 2005), ("一千零一十", 1010), ("12", 12)])
def test_chinese_numerals(text, value):
    assert chinese_numeral_to_int(text) == value
    if not text.isdigit() and "两" not in text:
        assert int_to_chinese_numeral(value) == text


def test_chinese_numeral_rejects_other_text():
    with pytest.raises(ValueError):
        chinese_numeral_to_int("第一")


@pytest.mark.parametrize("name,count", sorted(EXPECTED_ARTICLES.items()))
def test_every_law_file_chunks_into_its_articles(laws, name, count):
    chunks = chunk_articles(laws / name)
    assert [c.number for c in chunks] == list(range(1, count + 1))
    assert all(c.text.startswith(c.article) and c.body for c in chunks)


def test_article_structure(laws):
    chunks = chunk_articles(laws / LAW)
    a91 = chunks[90]
    assert (a91.article, a91.number, a91.document) == ("第九十一条", 91, "中华人民共和国道路交通安全法")
    assert a91.chapter == "第七章 法律责任" and a91.section is None
    assert chunks[0].chapter == "第一章 总则"  # '总 则' spacing normalised
    assert chunks[8].section and chunks[8].section.startswith("第一节")
    multi = [c for c in chunks if "\n" in c.text]
    assert multi and all(c.text.split("\n")[0].startswith(c.article) for c in multi)
    with_clauses = [c for c in chunks if len(c.clauses) >= 2]
    assert with_clauses and all(cl.startswith("（") for c in with_clauses for cl in c.clauses)
    lines = (laws / LAW).read_text(encoding="utf-8").split("\n")
    assert lines[a91.line - 1].startswith("第九十一条")


def test_chunk_document_without_articles(fixtures):
    chunks = chunk_document(fixtures / "corpus.txt")
    assert len(chunks) == 1 and chunks[0].number == 1
    assert len(chunk_document(fixtures / "corpus.txt", max_chars=60)) == 3


def test_templates_are_deterministic_and_cite(laws):
    c = chunk_articles(laws / LAW)[90]
    pairs = template_pairs(c, 3, seed=1)
    assert pairs == template_pairs(c, 3, seed=1) and len(pairs) == 3
    assert len({q for q, _ in pairs}) == 3
    assert all("第九十一条" in q and a.startswith("根据《中华人民共和国道路交通安全法》第九十一条") for q, a in pairs)
    assert any("处理" in q for q, _ in pairs)  # the article is about penalties


def test_build_templates_one_record_per_article_at_least(laws, tmp_path):
    out = tmp_path / "law.jsonl"
    res = build([laws / LAW], out, templates=2, seed=0)
    recs = read_records(out)
    arts = {r.source["article"] for r in recs}
    assert len(arts) == 124 and res.records == len(recs) == 248
    assert all(r.source["document"] == "中华人民共和国道路交通安全法" for r in recs)
    for r in recs:
        num = chinese_numeral_to_int(re.match(r"第(.+)条", r.source["article"]).group(1))
        assert r.source["article"] in r.answer and 1 <= num <= 124
    assert res.report.ok and res.report.findings == []
    assert not (tmp_path / "law.jsonl.partial").exists()
    again = tmp_path / "again.jsonl"
    build([laws / LAW], again, templates=2, seed=0)
    assert again.read_text() == out.read_text()  # reproducible


# ---------------------------------------------------------------- model-assisted generation
def fake_model(prompts: list[str]) -> list[str]:
    """Answers like an instruction-tuned model: a fenced JSON array of pairs citing the article asked about."""
    out = []
    for p in prompts:
        art = re.search(r"》(第[^条]+条)的原文", p).group(1)
        if art == "第三条":
            out.append("抱歉，我无法回答。")  # nothing usable
            continue
        pairs = [{"question": f"关于{art}，普通人需要注意什么？", "answer": f"按照{art}的要求，应当遵守相应规定。"},
                 {"question": f"{art}适用于哪些人？", "answer": f"{art}适用于所有相关的道路交通参与者。"},
                 {"question": f"{art}和第九百条有什么关系？", "answer": "第九百条并不存在。"}]
        out.append("好的，以下是问答：\n```json\n" + json.dumps(pairs, ensure_ascii=False) + "\n```")
    return out


def test_build_with_generator(laws, tmp_path, tokenizer):
    out = tmp_path / "gen.jsonl"
    seen = []
    res = build([laws / LAW], out, templates=1, generate_fn=fake_model, pairs=3, batch_size=16,
                on_progress=lambda d, t, label: seen.append((d, t)))
    recs = read_records(out)
    model = [r for r in recs if r.meta["generator"] == "model"]
    assert len(model) == 123 * 2 and res.model_records == 246 and res.template_records == 124
    assert res.failed_chunks == ["中华人民共和国道路交通安全法 第三条"]
    assert res.rejected == {"cites an article the document does not have": 123}
    assert all(r.source["article"] in r.answer for r in model)
    assert seen[-1] == (124, 124)
    # the generated pairs pass check
    report = check(out, tokenizer=tokenizer, model="tiny", cutoff=4096)
    assert report.ok, [f.message for f in report.errors]


def test_build_resumes_without_duplicates(laws, tmp_path):
    calls = []

    def flaky(prompts):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake_model(prompts)

    out = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt):
        build([laws / LAW], out, templates=1, generate_fn=flaky, batch_size=10)
    partial = tmp_path / "r.jsonl.partial"
    assert partial.exists() and not out.exists()
    done_before = len(partial.read_text().splitlines())
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"messages": [{"role": "user", "con')  # a half-written line from a hard kill
    calls.clear()
    res = build([laws / LAW], out, templates=1, generate_fn=fake_model_counting(calls), batch_size=10)
    # the 20 chunks done before are skipped; the one that gave nothing usable (第三条) is asked again
    assert sum(calls) == 124 - 20 + 1 and res.resumed == done_before
    recs = read_records(out)
    keys = [(r.source["article"], r.meta["generator"], r.source["index"]) for r in recs]
    assert len(keys) == len(set(keys)) == 124 + 123 * 2
    full = tmp_path / "full.jsonl"
    build([laws / LAW], full, templates=1, generate_fn=fake_model, batch_size=10)
    assert sorted(full.read_text().splitlines()) == sorted(out.read_text().splitlines())


def fake_model_counting(calls):
    def gen(prompts):
        calls.append(len(prompts))
        return fake_model(prompts)
    return gen


def test_parse_pairs_variants():
    assert parse_pairs('[{"question": "q1", "answer": "a1"}]') == [("q1", "a1")]
    assert parse_pairs('Sure!\n```\n[{"q": "q2", "a": "a2"}]\n```') == [("q2", "a2")]
    assert parse_pairs("问：红灯能右转吗？\n答：看信号灯。\n问：第二问\n答：第二答") == [("红灯能右转吗？", "看信号灯。"),
                                                                          ("第二问", "第二答")]
    assert parse_pairs("no pairs here") == []
    assert cites_missing_article("依据第九十一条和第12条", {12, 91}) is None
    assert cites_missing_article("依据第二百条", {1, 2}) == "第二百条"


@pytest.fixture
def fake_server():
    """A tiny OpenAI-compatible server on 127.0.0.1 answering with the fake model."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    requests = []

    @app.post("/v1/chat/completions")
    async def completions(req: Request):
        body = await req.json()
        requests.append({"body": body, "auth": req.headers.get("authorization")})
        reply = fake_model([body["messages"][-1]["content"]])[0]
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        t.join(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", requests
    server.should_exit = True
    t.join(5)


def test_endpoint_generator(fake_server, laws, tmp_path):
    url, requests = fake_server
    gen = endpoint_generator(url, model="qwen-local", api_key="sk-test", seed=7, concurrency=4)
    chunks = chunk_articles(laws / "violation_points_rules_2021.md")
    res = build([laws / "violation_points_rules_2021.md"], tmp_path / "e.jsonl", templates=0, generate_fn=gen,
                batch_size=8)
    assert len(requests) == len(chunks) == 37 and res.model_records == 36 * 2
    assert requests[0]["body"]["model"] == "qwen-local" and requests[0]["body"]["seed"] == 7
    assert requests[0]["auth"] == "Bearer sk-test"
    assert read_records(tmp_path / "e.jsonl")[0].meta["model"] == "qwen-local"


def test_endpoint_errors_are_friendly(fake_server):
    url, _ = fake_server
    with pytest.raises(LorakitError, match="HTTP 404"):
        endpoint_generator(url.replace("/v1", "/nope"))(["x"])
    with pytest.raises(LorakitError, match="cannot reach"):
        endpoint_generator("http://127.0.0.1:9", timeout=2)(["x"])


def test_local_generator_with_tiny_random_model(tmp_path, laws):
    pytest.importorskip("torch")
    from lorakit.data.build import local_generator
    from lorakit.models.tiny import build_tiny

    path = build_tiny(tmp_path / "tiny")
    gen = local_generator(str(path), max_new_tokens=6)
    replies = gen(["第一条讲了什么？", "What does article 2 say?"])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert gen(["第一条讲了什么？"]) == gen(["第一条讲了什么？"])  # greedy: reproducible
    doc = tmp_path / "mini.md"
    doc.write_text("# 示例规定\n\n## 第一章 总则\n\n第一条 本规定用于测试。\n\n第二条 测试应当快速完成。\n", encoding="utf-8")
    res = build([doc], tmp_path / "o.jsonl", templates=1, generate_fn=gen, pairs=1)
    assert res.template_records == 2 and res.model_records + len(res.failed_chunks) >= 2
