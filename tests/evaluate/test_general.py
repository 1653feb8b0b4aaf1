"""The general-ability probe: its shipped items are consistent, its scoring is exact, its report compares base and
adapters; on the real default model the base is clearly above chance."""
import json
import re
import unicodedata
from collections import Counter

import pytest
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.evaluate import general as G


def _norm(text: str, *, case: bool = False) -> str:
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()
    return text if case else text.lower()


@pytest.fixture(scope="module")
def items():
    return G.load_items()


def test_probe_items_are_consistent(items):
    assert len(items) >= 200
    cells = Counter((it.category, it.lang) for it in items)
    assert {c for c, _ in cells} == set(G.CATEGORIES)
    assert all(cells[(c, lang)] >= 20 for c in G.CATEGORIES for lang in ("en", "zh"))
    assert len({it.id for it in items}) == len(items)
    assert len({_norm(it.question) for it in items}) == len(items), "a question appears twice"
    for it in items:
        assert len(it.options) == 4 and 0 <= it.answer < 4, it.id
        opts = [_norm(o, case=True) for o in it.options]  # case matters: 'hello' vs 'HELLO' is the point
        assert all(opts) and len(set(opts)) == 4, f"{it.id}: an option is empty or repeated"
        assert _norm(it.question) not in opts, it.id
        if it.lang == "zh":
            assert re.search(r"[\u4e00-\u9fff]", it.question), it.id
    # the right option is spread over A-D, so a model that always answers one letter scores about chance
    positions = Counter(it.answer for it in items)
    assert all(0.2 <= positions[p] / len(items) <= 0.3 for p in range(4)), positions


def test_arithmetic_keys_are_right(items):
    """Every bare 'a op b' item's key is the computed value, and no distractor is."""
    ops = {"+": int.__add__, "−": int.__sub__, "×": int.__mul__, "÷": int.__floordiv__,
           "加": int.__add__, "减去": int.__sub__, "乘以": int.__mul__, "除以": int.__floordiv__}
    checked = 0
    for it in items:
        m = re.fullmatch(r"What is (\d+) ([+−×÷]) (\d+)\?|(\d+) (加|减去|乘以|除以) (\d+) 等于多少？", it.question)
        if not m:
            continue
        a, op, b = [g for g in m.groups() if g is not None]
        want = str(ops[op](int(a), int(b)))
        assert it.options[it.answer] == want, it.id
        assert want not in [o for i, o in enumerate(it.options) if i != it.answer], it.id
        checked += 1
    assert checked >= 12


def test_open_instructions_text_and_replay_prompts_are_apart():
    from lorakit.data.replay import load_templates, replay_prompts
    opens = G.load_open()
    assert len(opens) >= 6 and {o["lang"] for o in opens} == {"en", "zh"}
    text = G.load_text()
    assert len(text) >= 4 and any(re.search(r"[\u4e00-\u9fff]", p) for p in text)
    templates, _ = load_templates()
    prompts = {_norm(p["prompt"]) for p in replay_prompts(400, seed=0)}
    # replay trains on its prompts: none may be a probe question or an open instruction
    assert not prompts & {_norm(o["prompt"]) for o in opens}
    assert not prompts & {_norm(it.question) for it in G.load_items()}
    assert {t["lang"] for t in templates} == {"en", "zh"}


def test_wilson_interval():
    lo, hi = G.wilson(150, 200)
    assert lo < 0.75 < hi and hi - lo == pytest.approx(0.12, abs=0.01)
    assert G.wilson(0, 20)[0] == 0.0 and G.wilson(20, 20)[1] == 1.0


def test_score_replies_equal_full_sequence_scores(tiny_model, items):
    """Batched, left-padded rows after the cached prefix shared by all prompts give the same summed
    log-probabilities as scoring each full sequence alone; so do rows without the prefix and tiny passes."""
    import torch

    from lorakit.models import load_model, load_tokenizer, pick_precision
    tok, prec = load_tokenizer(tiny_model), pick_precision(requested="fp32")
    model = load_model(tiny_model, prec)
    chosen = (items[0], items[120], items[61], items[200])  # English and Chinese, several kinds and lengths
    prompts = [G.prompt_ids(tok, it.messages()) for it in chosen]
    replies = [it.replies() for it in chosen]
    prefix = G.shared_prefix(model, prompts, precision=prec)
    assert prefix is not None and len(prefix.ids) >= 3  # at least the user-turn header is shared
    want = []
    for prompt, reps in zip(prompts, replies):
        row = []
        for reply in reps:
            ids = tok(reply, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + ids])).logits[0].float(), -1)
            row.append(sum(lp[len(prompt) + t - 1, ids[t]].item() for t in range(len(ids))))
        want.append(row)
    for kwargs in ({}, {"prefix": prefix}, {"prefix": prefix, "positions_per_pass": 1}):
        got = G.score_replies(model, tok, prompts, replies, precision=prec, **kwargs)
        for g_row, w_row in zip(got, want):
            assert g_row == pytest.approx(w_row, abs=1e-3), kwargs
    per_token = G.score_replies(model, tok, prompts, replies, precision=prec, prefix=prefix, per_token=True)
    for reps, p_row, w_row in zip(replies, per_token, want):
        lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in reps]
        assert p_row == pytest.approx([w / n for w, n in zip(w_row, lengths)], abs=1e-4)


def test_items_ask_the_question_alone_and_score_the_option_text(items):
    """Cloze form: the options are not listed in the prompt (a small model then scores its taste for a letter)."""
    it = items[0]
    assert it.messages() == [{"role": "user", "content": it.question}]
    assert it.replies() == list(it.options)


@pytest.fixture
def tiny_adapter(tiny_model, tmp_path):
    from lorakit.config import TrainConfig
    from lorakit.train.recipe import train
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"问题{i}"},
                                                     {"role": "assistant", "content": f"回答{i}"}]},
                                       ensure_ascii=False) + "\n" for i in range(8)), encoding="utf-8")
    return train(TrainConfig(model=str(tiny_model), data=str(data), runs_dir=str(tmp_path / "runs"), name="a",
                             max_steps=2, learning_rate=5e-2, precision="fp32")).run_dir


def test_general_compare_base_vs_adapter(tiny_model, tiny_adapter, tmp_path):
    rep = G.general_compare(str(tiny_model), [tiny_adapter], out_dir=tmp_path / "out", limit=10, max_new_tokens=4)
    assert [s.name for s in rep.systems] == ["base", "a"]
    assert {it.category for it in rep.items} == set(G.CATEGORIES)  # every k-th item keeps all categories
    base, tuned = rep.row(rep.systems[0]), rep.row(rep.systems[1])
    for r in (base, tuned):
        assert r["n"] == 10 and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert "accuracy_shift" not in base
    assert tuned["text_loss_shift"] == pytest.approx(rep.systems[1].text_loss - rep.systems[0].text_loss)
    assert tuned["text_loss_shift"] != 0  # the adapter changed the model
    assert tuned["lost"] - tuned["gained"] == round(-tuned["accuracy_shift"] * 10)
    assert all(len(s.answers) == len(rep.open) for s in rep.systems)
    saved = json.loads((tmp_path / "out" / "general.json").read_text(encoding="utf-8"))
    assert set(saved["systems"]) == {"base", "a"}
    md = (tmp_path / "out" / "general.md").read_text(encoding="utf-8")
    assert rep.open[0]["prompt"] in md and "| a |" in md
    rows = [json.loads(x) for x in (tmp_path / "out" / "general_items.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and set(rows[0]) >= {"id", "answer", "base", "a"}


def test_cli_eval_general(tiny_model, tiny_adapter, tmp_path, monkeypatch, items):
    few = items[::50]
    monkeypatch.setattr(G, "load_items", lambda: few)  # the wiring, not the probe's size, is tested here
    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["eval", "--general", "--model", str(tiny_model), "--adapter", str(tiny_adapter),
                                   "--out", str(out), "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "general.md" in res.output
    assert (out / "general.md").exists() and not (out / "eval.md").exists()


def test_cli_eval_needs_data_or_general():
    res = CliRunner().invoke(app, ["eval", "--model", "tiny-random"])
    assert res.exit_code == 2 and "--general" in res.output


@pytest.mark.real_model
def test_default_model_is_clearly_above_chance(default_model, tmp_path):
    """On every third item (70, all categories) the base model is clearly above chance (25 %): 38 of 70 (54 %)
    were measured in the cloze form (2-core AMX Xeon, bf16), a 95 % interval from 43 % to 65 %; the test leaves a
    margin of six items, because bf16 and fp32 (picked by a speed probe) can flip an item or two."""
    rep = G.general_compare("qwen2.5-coder-0.5b-instruct", [], limit=70, max_new_tokens=16)
    row = rep.row(rep.systems[0])
    print("base on the probe subset:", row)  # shown with -s: the figure the README quotes
    assert row["accuracy"] >= 0.46 and row["ci95"][0] > 0.3, row
