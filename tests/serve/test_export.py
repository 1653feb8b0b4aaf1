"""`lorakit export` on the tiny model: bf16 safetensors, GGUF f16 + quantised types with the chat template and
end-of-turn inside, the Ollama Modelfile, and the export parity check with its verdicts."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def run(stopping_run):
    return stopping_run


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    from lorakit.serve.export import merge_and_export
    model, adapter, _ = run
    out = tmp_path_factory.mktemp("exported") / "law-merged"
    # quantizer="gguf": the gguf package's quantisers (the path without llama-cpp-python); llama.cpp's own
    # quantiser is tested in test_llamacpp.py
    return merge_and_export(str(model), adapter, out, gguf=["q8_0", "q4_0"], quantizer="gguf", n=6,
                            answers=4, max_new_tokens=12), out


def test_export_writes_bf16_gguf_types_and_modelfile(exported, run):
    import gguf
    from safetensors import safe_open

    from lorakit.models import load_tokenizer
    from lorakit.serve.modelfile import CHECKS, derive_pieces, read_modelfile
    info, out = exported
    assert list(info["gguf"]) == ["f16", "q8_0", "q4_0"]  # f16 beside the quantised types, in order
    with safe_open(str(out / "model.safetensors"), framework="pt") as st:
        assert {str(st.get_tensor(k).dtype) for k in st.keys()} == {"torch.bfloat16"}
    tok = load_tokenizer(run[0])
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    sizes = {}
    for t, path in info["gguf"].items():
        r = gguf.GGUFReader(path)
        fields = {k: r.fields[k] for k in ("tokenizer.chat_template", "tokenizer.ggml.eot_token_id")}
        assert bytes(fields["tokenizer.chat_template"].parts[-1]).decode() == tok.chat_template
        assert int(fields["tokenizer.ggml.eot_token_id"].parts[-1][0]) == eot
        types = {x.name: x.tensor_type.name for x in r.tensors}
        assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay F32
        assert types["blk.0.ffn_down.weight"] == t.upper()
        assert types["output.weight"] == ("Q8_0" if t == "q4_0" else t.upper())  # the head keeps 8 bits
        sizes[t] = info["files"][f"{out.name}.{t}.gguf"]
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]
    by = info["gguf_written_by"]
    assert "gguf.GGUFWriter" in by["f16"] and "block quantisers" not in by["f16"]
    assert all("gguf.GGUFWriter" in by[t] and "block quantisers" in by[t] for t in ("q8_0", "q4_0")), by
    # 2 layers of 7 matrices + the embedding in Q4_0, the head in Q8_0, norms and q/k/v biases in F32
    assert info["gguf_tensor_types"]["q4_0"] == {"Q4_0": 15, "F32": 11, "Q8_0": 1}

    mf = read_modelfile(out / "Modelfile")
    assert mf["FROM"] == f"./{out.name}.q8_0.gguf" and (out / mf["FROM"]).exists()  # the first type asked for
    assert ("stop", "<|im_end|>") in mf["PARAMETER"]
    pieces = derive_pieces(tok)
    assert mf["TEMPLATE"] == pieces.go_template() and "{{ .Content }}" in mf["TEMPLATE"]
    for msgs in CHECKS:  # the Go template's pieces render every check conversation as the Jinja template does
        assert pieces.compose(msgs) == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def test_export_parity_rows_and_report(exported):
    info, out = exported
    saved = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert saved["ok"] == info["ok"] and "parity" in saved and not (out / ".fp32").exists()
    par = saved["parity"]
    # teacher-forced on 6 eval answers, greedy answers to the first 4 of them
    assert "eval questions" in par["source"] and len(par["prompts"]) == 6 and par["answer_tokens"] >= 6 * 3
    assert par["answered"] == 4 and len(par["adapter_answers"]) == 4
    rows = {r["name"]: r for r in par["rows"]}
    assert list(rows) == ["adapter (reference)", "merged (bf16)", "gguf f16", "gguf q8_0", "gguf q4_0"]
    assert {r["n"] for r in rows.values()} == {6} and {r["n_answers"] for r in rows.values()} == {4}
    assert all(len(r["answers"]) == len(r["parted_at"]) == 4 for r in rows.values())
    ref = rows["adapter (reference)"]
    assert ref["stopped"] == ref["n_answers"] == 4, ref["answers"]  # the adapter learned to stop: a real stop check
    assert all(a.startswith("记") for a in ref["answers"]), ref["answers"]  # after real words, not at once
    for name in ("gguf f16", "gguf q8_0"):
        r = rows[name]
        assert r["top1"] >= r["floor"] and r["kl"] < 0.01 and r["identical"] == 4 and r["stopped"] == 4, r
        assert r["failures"] == [] and r["parted_at"] == [None] * 4
    q4 = rows["gguf q4_0"]
    assert q4["kl"] > rows["gguf q8_0"]["kl"] > rows["gguf f16"]["kl"] >= 0  # more bits lost, further away
    assert rows["merged (bf16)"]["engine"] == "transformers"


def test_verdicts_name_what_is_wrong():
    from lorakit.serve.parity import Probe, Reference, Row, verdict
    ref = Reference(probes=[Probe([])] * 2, logits=[], answers=["记6分。", "记7分。"], stopped=[True, True])

    def row(top1, answers, stopped, fmt="q8_0"):
        return Row(name="gguf", engine="llama.cpp", fmt=fmt, size_mb=1, top1=top1, kl=0, max_logit_diff=0,
                   identical=0, parted_at=[], stopped=sum(stopped), n=2, floor=0.97, answers=answers)

    assert verdict(row(0.99, ref.answers, [True, True]), ref, [True, True]) == []
    low = verdict(row(0.9, ref.answers, [True, True]), ref, [True, True])
    assert len(low) == 1 and "90.0%" in low[0] and "97%" in low[0] and "q8_0" in low[0]
    never = verdict(row(0.99, ["记6分。记6分。", "x"], [False, False]), ref, [False, False])
    assert never and "never emits end-of-turn" in never[0]
    past = verdict(row(0.99, ["记6分。记6分。", "记7分。"], [False, True]), ref, [False, True])
    assert past and "runs past end-of-turn" in past[0] and "#1" in past[0]


def test_cli_export_fails_clearly_when_parity_fails(run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lorakit.cli import app
    from lorakit.serve import parity
    model, adapter, data = run
    monkeypatch.setitem(parity.FLOORS, "q4_0", 1.01)  # no file can reach it: the failure path, end to end
    out = tmp_path / "m"
    res = CliRunner().invoke(app, ["export", "--adapter", str(adapter), "--out", str(out), "--gguf", "q4_0",
                                   "--data", str(data), "-n", "2", "--max-new-tokens", "6"])
    assert res.exit_code == 2, res.output
    assert "parity check failed" in res.output and "gguf q4_0" in res.output and "101%" in res.output
    assert "Traceback" not in res.output
    saved = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert saved["ok"] is False and [r["name"] for r in saved["parity"]["rows"] if r["failures"]] == ["gguf q4_0"]


def test_export_refuses_bad_types_and_a_full_folder(run, tmp_path):
    from lorakit.errors import LorakitError
    from lorakit.serve.export import merge_and_export
    model, adapter, _ = run
    with pytest.raises(LorakitError, match="unknown GGUF type 'q3_k'"):
        merge_and_export(str(model), adapter, tmp_path / "a", gguf=["q3_k"])
    with pytest.raises(LorakitError, match="'q4_k_m' is written only by llama.cpp's quantiser"):
        merge_and_export(str(model), adapter, tmp_path / "a", gguf=["q4_k_m"], quantizer="gguf")
    with pytest.raises(LorakitError, match="unknown quantizer 'numpy'"):
        merge_and_export(str(model), adapter, tmp_path / "a", gguf=["q8_0"], quantizer="numpy")
    with pytest.raises(LorakitError, match="bf16 or fp32"):
        merge_and_export(str(model), adapter, tmp_path / "a", dtype="fp8")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(LorakitError, match="not empty"):
        merge_and_export(str(model), adapter, tmp_path / "full")


def test_parity_without_llamacpp_reads_the_gguf_in_transformers(run, tmp_path, monkeypatch):
    """Without llama-cpp-python the GGUFs are checked dequantised in transformers (and the report says so);
    that model is not loaded through load_model, so it gets the contiguous-head hook here too."""
    from lorakit.serve.engines import llamacpp
    from lorakit.serve.export import merge_and_export
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    model, adapter, data = run
    info = merge_and_export(str(model), adapter, tmp_path / "m", gguf=["q8_0"], quantizer="gguf", data=data, n=3,
                            answers=2, max_new_tokens=8)
    par = info["parity"]
    assert par["llamacpp"] is False and par["answered"] == 2
    rows = {r["name"]: r for r in par["rows"]}
    for name in ("gguf f16", "gguf q8_0"):
        assert rows[name]["engine"] == "transformers*" and rows[name]["n"] == 3 and rows[name]["n_answers"] == 2
        assert rows[name]["top1"] >= rows[name]["floor"] and rows[name]["identical"] == 2, rows[name]


def test_parity_prompts_come_from_the_set_the_run_was_evaluated_on(tmp_path):
    """A quickstart run trains without eval data but is evaluated on the held-out questions (eval/eval.json): the
    parity check uses those, not lorakit's four default prompts; --data still wins, and a run never evaluated
    falls back to the defaults, saying so."""
    from lorakit.serve.export import parity_conversations
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "config.yaml").write_text("eval_data: null\n", encoding="utf-8")
    none, why = parity_conversations(run / "adapter", None, 8)
    assert none is None and "no eval data" in why
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"instruction": f"问题{i}？", "output": f"答案{i}。"}, ensure_ascii=False) + "\n"
                            for i in range(5)), encoding="utf-8")
    (run / "eval" / "eval.json").write_text(json.dumps({"meta": {"data": str(held)}, "systems": []}),
                                            encoding="utf-8")
    convs, why = parity_conversations(run / "adapter", None, 3)
    assert len(convs) == 3 and "evaluated on" in why and str(held) in why
    assert convs[0][-1] == {"role": "assistant", "content": "答案0。"}
    assert convs[0][-2]["content"] == "问题0？"
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"instruction": "别的？", "output": "别的。"}, ensure_ascii=False) + "\n",
                     encoding="utf-8")
    convs, why = parity_conversations(run / "adapter", other, 3)
    assert [c[-1]["content"] for c in convs] == ["别的。"] and "evaluated on" not in why
