"""The exported GGUF in llama.cpp (llama-cpp-python, the [llamacpp] extra, installed by the [test] extra): the
parity check run through llama.cpp, the llama.cpp engine behind the server, and its timing in `perf`."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the [llamacpp] extra) is not installed")


@pytest.fixture(scope="module")
def exported(stopping_run, tmp_path_factory):
    from lorakit.serve.export import merge_and_export
    model, run, data = stopping_run
    info = merge_and_export(str(model), run, tmp_path_factory.mktemp("llamacpp") / "law", gguf=["q8_0"], n=4,
                            max_new_tokens=12)
    return info, data


def test_parity_runs_the_gguf_in_llamacpp(exported):
    info, _ = exported
    par = info["parity"]
    assert par["llamacpp"] is True
    rows = {r["name"]: r for r in par["rows"]}
    for name in ("gguf f16", "gguf q8_0"):
        r = rows[name]
        assert r["engine"] == "llama.cpp"
        assert r["tokenizer_match"] == r["n"] == 4  # llama.cpp splits the prompts as the tokenizer does
        assert r["stopped"] == 4  # end-of-turn survived: llama.cpp stops where the adapter stops
        assert r["top1"] >= r["floor"] and r["identical"] == 4 and not r["failures"], r


def test_server_on_the_llamacpp_engine(exported, http_server):
    import openai

    from lorakit.serve.engines.llamacpp import GGUFSystem
    from lorakit.serve.server import Limits, build_app
    info, _ = exported
    system = GGUFSystem(info["gguf"]["q8_0"], n_ctx=512)
    served = http_server(build_app(system, limits=Limits(max_prompt_tokens=256, max_tokens=32, default_max_tokens=12)))
    client = openai.OpenAI(base_url=served.url, api_key="none", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == [system.base_name]
    ask = [{"role": "user", "content": "第1题：闯红灯扣几分？"}]
    r = client.chat.completions.create(model=system.base_name, messages=ask)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens <= 12
    adapter_answer = info["parity"]["adapter_answers"][1]
    assert adapter_answer.startswith("记")  # a real answer, then end-of-turn
    assert r.choices[0].message.content == adapter_answer  # the same answer the adapter gave
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=system.base_name, messages=ask, stream=True) if c.choices)
    assert streamed.strip() == adapter_answer
    with pytest.raises(openai.BadRequestError, match="prompt tokens"):
        client.chat.completions.create(model=system.base_name, messages=[{"role": "user", "content": "罚" * 600}])


def test_perf_times_the_gguf_beside_transformers(exported):
    from lorakit.evaluate.bench import perf
    info, data = exported
    results = perf(info["base"], data, merged=info["merged"], gguf=[info["gguf"]["q8_0"]], n=2, max_new_tokens=6)
    assert [r.name for r in results] == ["base", "merged", "law.q8_0 (llama.cpp)"]
    g = results[-1]
    assert g.latency_s > 0 and 1 <= g.new_tokens <= 6 and g.decode_tps > 0
