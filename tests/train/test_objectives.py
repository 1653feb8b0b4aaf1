"""Preference and KTO objectives (stage dpo, orpo, kto, simpo) through the one recipe, and tool-calling SFT,
on the tiny random model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from lorakit.config import TrainConfig, build
from lorakit.errors import LorakitError
from lorakit.train import recipe



def pair_rows(n: int = 8) -> list[dict]:
    """Pairs in TRL's conversational form: the right article chosen, a wrong one rejected."""
    rows = []
    for i in range(n):
        q = f"第{i}题：超速{i % 5 + 1}0%会被怎样处罚？"
        a = f"根据《道路交通安全法》第九十九条，超速{i % 5 + 1}0%可处罚款{100 + 10 * i}元。"
        rows.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
                     "rejected": [{"role": "assistant", "content": a.replace("第九十九条", "第八十条")}],
                     "source": {"document": "道路交通安全法", "article": "第九十九条"}})
    return rows


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pair_rows()), encoding="utf-8")
    return p


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_dpo_from_an_sft_adapter_resumes_and_logs_preference_metrics(base_cfg, pairs_file, tmp_path):
    sft = recipe.train(TrainConfig(**{**base_cfg, "max_steps": 2, "name": "sft"}))
    cfg = {**base_cfg, "data": str(pairs_file), "stage": "dpo", "adapter": str(sft.run_dir), "max_steps": 4,
           "save_steps": 2, "batch_size": 2, "learning_rate": 5e-3, "name": "dpo"}
    res = recipe.train(TrainConfig(**cfg))
    s = res.summary
    assert s["stage"] == "dpo" and s["status"] == "finished" and s["global_step"] == 4
    assert {"rewards/margins", "logps/chosen", "logps/rejected"} <= set(s["preference"])
    rows = [r for r in metric_rows(res.run_dir) if "loss" in r]
    # the reference is the starting SFT adapter (a frozen copy), so at the first step policy == reference
    assert rows[0]["rewards/chosen"] == 0 and rows[0]["rewards/margins"] == 0
    assert rows[-1]["rewards/margins"] > 0  # it learned to prefer the right article
    assert not (res.adapter_dir / "ref").exists() and (res.adapter_dir / "adapter_config.json").exists()
    assert (res.run_dir / "loss.png").stat().st_size > 0

    # an interrupted copy (its last checkpoint and outputs gone) resumes to the same curve
    cut = Path(cfg["runs_dir"]) / "cut"
    shutil.copytree(res.run_dir, cut)
    for p in (cut / "adapter", cut / "checkpoints" / "checkpoint-4"):
        shutil.rmtree(p)
    (cut / "summary.json").unlink()
    again = recipe.train_from_cli(None, {}, resume=cut)
    assert again.summary["resumed_from"].endswith("checkpoint-2")
    got = {r["step"]: r["loss"] for r in metric_rows(cut) if "loss" in r}
    want = {r["step"]: r["loss"] for r in rows}
    assert sorted(got) == [1, 2, 3, 4] and all(abs(got[k] - want[k]) < 1e-4 for k in want)


@pytest.mark.parametrize("stage", ["orpo", "kto", "simpo"])
def test_other_objectives_train_from_the_base(stage, base_cfg, pairs_file):
    res = recipe.train(TrainConfig(**{**base_cfg, "data": str(pairs_file), "stage": stage, "max_steps": 1,
                                      "batch_size": 2, "name": stage}))
    assert res.summary["stage"] == stage and res.summary["global_step"] == 1
    assert "logps/chosen" in res.summary["preference"] and res.summary["train_loss"] is not None
    assert res.summary["preference"]["beta"] == (2.0 if stage == "simpo" else 0.1)


def test_stage_settings_are_validated(tmp_path):
    with pytest.raises(LorakitError, match="not a dpo loss"):
        build(TrainConfig, None, {"data": "x", "stage": "dpo", "pref": {"loss_type": "kto"}})
    with pytest.raises(LorakitError, match="does not apply to stage orpo"):
        build(TrainConfig, None, {"data": "x", "stage": "orpo", "pref": {"loss_type": "sigmoid"}})
    with pytest.raises(LorakitError, match="method full"):
        build(TrainConfig, None, {"data": "x", "stage": "dpo", "adapter": "runs/sft", "method": "full"})
    with pytest.raises(LorakitError, match="pref.beta"):
        build(TrainConfig, None, {"data": "x", "stage": "dpo", "pref": {"beta": -1}})
    assert build(TrainConfig, None, {"data": "x", "stage": "dpo"}).learning_rate == 5e-5
    assert build(TrainConfig, None, {"data": "x", "stage": "dpo", "learning_rate": 1e-4}).learning_rate == 1e-4
    assert build(TrainConfig, None, {"data": "x"}).learning_rate == 2e-4


def test_wrong_kind_of_data_for_the_stage(base_cfg, pairs_file, qa_file):
    with pytest.raises(LorakitError, match="stage dpo learns from preference pairs.*holds SFT conversations"):
        recipe.train(TrainConfig(**{**base_cfg, "data": str(qa_file), "stage": "dpo"}))
    with pytest.raises(LorakitError, match="stage sft learns from SFT conversations.*holds preference pairs"):
        recipe.train(TrainConfig(**{**base_cfg, "data": str(pairs_file)}))


def test_dpo_dry_run_shows_chosen_and_rejected(base_cfg, pairs_file):
    console = Console(record=True, width=200)
    res = recipe.train(TrainConfig(**{**base_cfg, "data": str(pairs_file), "stage": "dpo"}), dry_run=True,
                       console=console)
    out = console.export_text()
    assert res.summary["dry_run"] and "stage dpo (β 0.1)" in out
    assert "example 1, chosen" in out and "example 1, rejected" in out and "第八十条" in out


TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\nTools: ' + (tools | tojson) + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' and message.tool_calls %}{{ '<|im_start|>assistant\\n' }}"
    "{%- for c in message.tool_calls %}{{ '<tool_call>' + (c.function | tojson) + '</tool_call>' }}{%- endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_tool_calls_are_trained_with_the_models_template_and_results_are_not(tiny_dir, tmp_path, base_cfg):
    from lorakit.data.formats import read_records
    from lorakit.data.tokenize import assistant_spans
    from lorakit.models import load_tokenizer
    tools = [{"name": "query_fine", "parameters": {"type": "object", "properties": {"plate": {"type": "string"}}}}]
    rows = [{"conversations": [{"from": "human", "value": f"查粤B1234{i}的罚款"},
                               {"from": "function_call", "value": json.dumps(
                                   {"name": "query_fine", "arguments": {"plate": f"粤B1234{i}"}}, ensure_ascii=False)},
                               {"from": "observation", "value": "RESULT_200"},
                               {"from": "gpt", "value": "罚款200元。"}], "tools": json.dumps(tools)} for i in range(4)]
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(LorakitError, match="cannot render tool calls"):
        recipe.train(TrainConfig(**{**base_cfg, "data": str(data)}), dry_run=True)

    model = tmp_path / "tool-model"
    shutil.copytree(tiny_dir, model)
    tok = load_tokenizer(model)
    tok.chat_template = TOOL_TEMPLATE
    tok.save_pretrained(model)
    tok = load_tokenizer(model)
    conv = read_records(data)[0]
    ids, mask = assistant_spans(tok, conv.messages(), tools=conv.tools)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert '<tool_call>{"name": "query_fine"' in trained and "罚款200元。" in trained
    assert "RESULT_200" not in trained and "Tools:" not in trained and "查粤B" not in trained
    res = recipe.train(TrainConfig(**{**base_cfg, "model": str(model), "data": str(data), "max_steps": 1}))
    assert res.summary["global_step"] == 1 and res.summary["supervised_tokens"] > 4 * len(tok("罚款200元。")["input_ids"])
