"""Grounded answers outside `rag ask`: the server's NAME+rag systems and `chat --index` show their evidence."""
from __future__ import annotations

import json

from fastapi.testclient import TestClient


def test_server_rag_systems_answer_over_passages_with_evidence(tiny_model, tiny_adapter, bm25_index):
    from lorakit.serve.server import Systems, build_app, parse_adapters
    systems = Systems(str(tiny_model), parse_adapters([f"law={tiny_adapter}"]), index=bm25_index, k=2)
    assert systems.names == [tiny_model.name, "law", f"{tiny_model.name}+rag", "law+rag"]
    client = TestClient(build_app(systems, default_max_tokens=6))
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == systems.names

    ask = {"messages": [{"role": "user", "content": "醉酒驾驶机动车要承担什么责任？"}], "max_tokens": 6}
    plain = client.post("/v1/chat/completions", json={**ask, "model": "law"}).json()
    assert "lorakit" not in plain
    grounded = client.post("/v1/chat/completions", json={**ask, "model": "law+rag"}).json()
    ev = grounded["lorakit"]
    assert len(ev["passages"]) == 2 and ev["passages"][0]["label"].startswith("《")
    assert {"citations", "unsupported_figures"} <= set(ev)
    # the passages made the prompt longer: the model really saw them
    assert grounded["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 50

    with client.stream("POST", "/v1/chat/completions", json={**ask, "model": "law+rag", "stream": True}) as r:
        events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert [p["label"] for p in events[-1]["lorakit"]["passages"]] == [p["label"] for p in ev["passages"]]


def test_chat_with_index_shows_the_evidence(tiny_model, bm25_index, monkeypatch):
    from rich.console import Console

    from lorakit.serve.chat import chat_loop
    lines = iter(["酒后驾驶怎么处罚？", "/exit"])
    console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(console, "input", lambda prompt="": next(lines))
    seen = []
    chat_loop(str(tiny_model), None, system=None, max_new_tokens=4, temperature=0.0, console=console,
              index=bm25_index, k=3, on_answer=seen.append)
    assert len(seen) == 1 and 1 <= len(seen[0].hits) <= 3  # the tiny model's context may drop the last passages
    assert "参考资料" in seen[0].prompt[-1]["content"] and seen[0].question == "酒后驾驶怎么处罚？"
