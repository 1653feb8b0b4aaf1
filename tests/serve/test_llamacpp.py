"""The exported GGUF in llama.cpp (llama-cpp-python, the [llamacpp] extra, installed by the [test] extra): llama.cpp's
own quantiser writing the quantised types, the parity check run through llama.cpp, the llama.cpp engine behind the
server, and its timing in `perf`."""
from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the [llamacpp] extra) is not installed")


@pytest.fixture(scope="module")
def exported(stopping_run, tmp_path_factory):
    from lorakit.serve.export import merge_and_export
    model, run, data = stopping_run
    info = merge_and_export(str(model), run, tmp_path_factory.mktemp("llamacpp") / "law", gguf=["q8_0", "q4_k_m"],
                            n=4, max_new_tokens=12)
    return info, data


def test_parity_runs_the_gguf_in_llamacpp(exported):
    info, _ = exported
    by = info["gguf_written_by"]
    assert "gguf.GGUFWriter" in by["f16"]
    for t in ("q8_0", "q4_k_m"):  # llama.cpp's quantiser is the default once llama-cpp-python is installed
        assert by[t].startswith("llama.cpp (llama-cpp-python 0.3.36") and by[t].endswith("from law.f16.gguf"), by
    assert info["gguf_tensor_types"]["q8_0"] == {"Q8_0": 16, "F32": 11}
    # 64-wide rows hold no 256-value k-quant block: llama.cpp falls back (Q4_K → Q5_0, Q6_K → Q8_0), as it does
    # for the 0.5B default's 896-wide rows; the k-quants proper are checked on a 256-wide model below
    assert "Q4_K" not in info["gguf_tensor_types"]["q4_k_m"] and "Q5_0" in info["gguf_tensor_types"]["q4_k_m"]
    par = info["parity"]
    assert par["llamacpp"] is True
    rows = {r["name"]: r for r in par["rows"]}
    q4 = rows["gguf q4_k_m"]
    assert q4["floor"] == 0.85 and q4["engine"] == "llama.cpp" and q4["tokenizer_match"] == 4
    assert q4["kl"] > rows["gguf q8_0"]["kl"] > 0, q4
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


def test_llamacpp_writes_the_k_quants(tmp_path):
    """On rows a 256-value block fits, llama.cpp writes Q4_K/Q5_K/Q6_K (with its *_M mixes), llama.cpp loads each
    file, and fewer bits lie further from the f16 file's next-token distribution."""
    import torch

    from lorakit.models.gguf_writer import tensor_type_counts, write_gguf
    from lorakit.models.tiny import build_tiny
    from lorakit.serve.engines.llamacpp import LlamaCpp, quantize
    f16 = write_gguf(build_tiny(tmp_path / "wide", hidden=256), tmp_path / "wide.f16.gguf", dtype="f16")
    ids = list(range(3, 40))
    ref = torch.log_softmax(torch.as_tensor(LlamaCpp(f16, n_ctx=64, logits=True).logits(ids)), -1)

    def kl(path):
        got = torch.log_softmax(torch.as_tensor(LlamaCpp(path, n_ctx=64, logits=True).logits(ids)), -1)
        return float((ref.exp() * (ref - got)).sum(-1).mean())

    kls = {}
    for t, main in (("q6_k", "Q6_K"), ("q5_k_m", "Q5_K"), ("q4_k_m", "Q4_K")):
        out = tmp_path / f"wide.{t}.gguf"
        assert "llama_model_quantize" in quantize(f16, out, t)
        types = tensor_type_counts(out)
        assert max(types, key=types.get) == main and "F16" not in types, (t, types)
        kls[t] = kl(out)
    assert 0 < kls["q6_k"] < kls["q5_k_m"] < kls["q4_k_m"], kls
