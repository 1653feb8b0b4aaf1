"""Deployment on the tiny model: OpenAI-compatible server with two adapters, streaming chat, merge + export."""
import json

import pytest
import torch
from fastapi.testclient import TestClient

from lorakit.config import TrainConfig
from lorakit.errors import LorakitError
from lorakit.train import recipe


def qa_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"第{i}题：闯红灯扣几分？"},
                          {"role": "assistant", "content": f"根据《道路交通安全法》第九十条，罚款{50 + i}元，记6分。"}]}
            for i in range(n)]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two small adapters trained on the tiny model (different seeds, so they differ)."""
    from lorakit.models.tiny import build_tiny
    root = tmp_path_factory.mktemp("serve")
    model = build_tiny(root / "model")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in qa_rows(8)), encoding="utf-8")
    runs = []
    for seed in (1, 2):
        res = recipe.train(TrainConfig(model=str(model), data=str(data), runs_dir=str(root / "runs"),
                                       name=f"a{seed}", max_steps=3, learning_rate=5e-2, seed=seed,
                                       precision="fp32"))
        runs.append(res.run_dir)
    return model, runs


def test_server_models_chat_stream_and_errors(adapters):
    from lorakit.serve.server import Systems, build_app, parse_adapters
    model, (a1, a2) = adapters
    systems = Systems(str(model), parse_adapters([str(a1), f"second={a2}"]))
    client = TestClient(build_app(systems, default_max_tokens=6))
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["model", "a1", "second"]

    body = {"messages": [{"role": "user", "content": "酒驾怎么罚？"}], "max_tokens": 6}
    replies = {}
    for name in ids:
        r = client.post("/v1/chat/completions", json={**body, "model": name})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
        assert out["usage"]["completion_tokens"] <= 6
        replies[name] = out["choices"][0]["message"]["content"]
    # a LoRA trained at a high rate changes greedy output; base restored after an adapter request
    again = client.post("/v1/chat/completions", json={**body, "model": "model"}).json()
    assert again["choices"][0]["message"]["content"] == replies["model"]

    with client.stream("POST", "/v1/chat/completions", json={**body, "model": "a1", "stream": True}) as r:
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed.strip() == replies["a1"]

    r = client.post("/v1/chat/completions", json={**body, "model": "nope"})
    assert r.status_code == 404 and "available" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"model": "a1", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_parse_adapters_rejects_duplicates(tmp_path):
    from lorakit.serve.server import parse_adapters
    with pytest.raises(LorakitError):
        parse_adapters([f"x={tmp_path}", f"x={tmp_path}"])


def test_stream_reply_yields_text(adapters):
    from lorakit.models import load_model, load_tokenizer, pick_precision
    from lorakit.serve.chat import stream_reply
    model, (a1, _) = adapters
    m = load_model(model, pick_precision(requested="fp32"), adapter=a1)
    pieces = list(stream_reply(m, load_tokenizer(model), [{"role": "user", "content": "你好"}], max_new_tokens=5))
    assert pieces and isinstance(pieces[0], str)


def test_export_merges_and_writes_gguf(adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.serve.export import base_of, merge_and_export
    model, (a1, _) = adapters
    assert base_of(a1) == str(model) and base_of(a1 / "adapter") == str(model)
    info = merge_and_export(str(model), a1, tmp_path / "merged", dtype="fp32", gguf=["f32"], parity=False)
    assert info["max_logit_diff"] < 1e-4
    tok = load_tokenizer(model)
    ids = tok("超速怎么处罚", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = load_model(model, pick_precision(requested="fp32"), adapter=a1)(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
        from_gguf = AutoModelForCausalLM.from_pretrained(resolve(info["gguf"]["f32"]))(input_ids=ids).logits
    torch.testing.assert_close(merged, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(from_gguf, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(LorakitError):
        merge_and_export(str(model), a1, tmp_path / "merged")  # not empty: refuses to overwrite
