"""The board end to end in headless Chromium on the tiny model: every page driven as a person would, with a
screenshot of each (README's pictures come from here: `make screenshots`)."""
from __future__ import annotations

import json
import os
import re

from playwright.sync_api import expect


def shot(page, shots, name):
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_data_check_flags_the_planted_duplicate(page, shots, workspace):
    page.goto(page.url.split("#")[0] + "#data")
    page.select_option("#check-file", "data/train.jsonl")
    page.click("#check-run")
    dup = page.locator("#report-findings tr[data-code=duplicate]")
    expect(dup).to_have_count(1)
    expect(dup).to_contain_text("the same as line 2")
    expect(page.locator("#report-checks tr[data-check=duplicate] td.num")).to_have_text("1")
    dup.click()  # one click to the record: line 5 and the line it repeats
    expect(page.locator("#record-view")).to_contain_text("line 5")
    expect(page.locator("#record-view")).to_contain_text("related: line 2")
    expect(page.locator("#record-view")).to_contain_text("1号楼住户")
    shot(page, shots, "data")

    # split through the page writes files the lists then offer; a bad share is the CLI's paragraph, in the page
    page.fill("#split-eval", "abc")
    page.click("#split-run")
    expect(page.locator("#data-error")).to_have_text("field 'eval': 'abc' is neither a ratio (0.1) nor a count (200).")
    assert not (workspace / "data" / "split").exists()
    page.fill("#split-out", "data/split")
    page.fill("#split-eval", "5")
    page.click("#split-run")
    expect(page.locator("#data-result")).to_contain_text(re.compile(r"eval: [1-9]\d* records"))
    assert (workspace / "data" / "split" / "train.jsonl").exists()


def test_train_live_curve_stop_and_resume(page, shots, workspace):
    page.goto(page.url.split("#")[0] + "#train")
    form = page.locator("#train-form")
    expect(form.locator("[name='lora.r']")).to_have_value("8")  # defaults from TrainConfig
    # an invalid value is shown next to its field, with the one-paragraph error above
    form.locator("[name='lora.r']").fill("0")
    expect(page.locator(".field[data-field='lora.r'] .msg")).to_contain_text("greater than or equal to 1")
    expect(page.locator("#train-error")).to_contain_text("invalid configuration: 'lora.r'")
    form.locator("[name='lora.r']").fill("4")
    form.locator("[name=data]").select_option("data/train.jsonl")
    form.locator("[name=name]").fill("board-run")
    form.locator("[name=max_steps]").fill("300")
    form.locator("[name=precision]").select_option("fp32")
    form.locator("[name=learning_rate]").fill("0.01")
    expect(page.locator("#plan-summary [data-est=steps]")).to_have_text("300")  # the dry run, as you type
    expect(page.locator("#plan-mask pre")).to_contain_text("消防通道")
    page.click("#train-start")

    step = page.locator("#watch-step")
    expect(page.locator("#watch-state")).to_have_text("running", timeout=240_000)
    expect(step).to_have_text(re.compile(r"^[1-9]\d*$"))
    first = int(step.inner_text())
    run = workspace / "runs" / "board-run"
    pid = json.loads((run / "process.json").read_text())["pid"]
    assert os.getsid(pid) != os.getsid(0)  # its own session: the board (or a closed page) ending leaves it running
    expect(page.locator("#watch-max")).to_have_text("300")
    expect(step).not_to_have_text(str(first))  # the counter moves on its own
    page.wait_for_function("+document.querySelector('#chart').dataset.points >= 2")  # the curve grows
    expect(page.locator("#chart polyline.train")).to_have_count(1)
    shot(page, shots, "train")

    page.click("#runs tr[data-run=board-run] button[data-act=stop]")
    expect(page.locator("#watch-state")).to_have_text("interrupted", timeout=120_000)
    summary = json.loads((run / "summary.json").read_text())
    stopped = summary["global_step"]
    assert summary["status"] == "interrupted" and (run / f"checkpoints/checkpoint-{stopped}").is_dir()

    page.click("#runs tr[data-run=board-run] button[data-act=resume]")
    expect(page.locator("#watch-state")).to_have_text("running", timeout=240_000)
    expect(step).to_have_text(re.compile(r"^\d+$"))
    page.wait_for_function(f"+document.querySelector('#watch-step').textContent > {stopped}", timeout=120_000)
    page.click("#runs tr[data-run=board-run] button[data-act=stop]")
    expect(page.locator("#watch-state")).to_have_text("interrupted", timeout=120_000)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"].endswith(f"checkpoint-{stopped}") and summary["global_step"] > stopped
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == sorted(set(steps))  # the resumed curve continues without doubled steps


def test_compare_base_and_adapter(page, shots, trained_run):
    page.goto(page.url.split("#")[0] + "#evaluate")
    page.locator("#eval-adapters input[value=cli-run]").check()  # a run trained outside the board
    page.select_option("#eval-data", "data/eval.jsonl")
    page.fill("#eval-tokens", "8")
    page.click("#eval-run")
    table = page.locator("#eval-table")
    expect(table.locator("tr[data-system=base]")).to_have_count(1)
    expect(table.locator("tr[data-system=cli-run]")).to_have_count(1)
    frame = page.frame_locator("#eval-report")
    expect(frame.locator("h1")).to_contain_text("Evaluation")
    shot(page, shots, "evaluate")


def test_chat_streams_an_answer_with_its_evidence(page, shots, trained_run):
    page.goto(page.url.split("#")[0] + "#chat")
    page.locator("#chat-adapters input[value=cli-run]").check()
    page.select_option("#chat-index", "index")
    page.click("#chat-load")
    expect(page.locator("#chat-status")).to_contain_text("ready")
    expect(page.locator("#chat-system")).to_have_value("cli-run+rag")
    page.fill("#chat-max", "12")
    page.fill("#chat-input", "占用消防通道停车要交多少违约金？")
    page.keyboard.press("Enter")
    reply = page.locator(".msg.assistant").last
    expect(reply).not_to_have_class(re.compile("streaming"))
    assert int(reply.get_attribute("data-pieces")) >= 2  # streamed piece by piece, not one block
    expect(reply.locator(".evidence summary").first).to_contain_text("示例小区停车公约")
    expect(reply.locator(".evidence")).to_contain_text("第三条")
    shot(page, shots, "chat")


def test_export_merges_with_its_parity_check(page, shots, workspace, trained_run):
    page.goto(page.url.split("#")[0] + "#export")
    page.select_option("#export-run", "cli-run")
    page.fill("#export-out", "/etc/lorakit-merged")  # outside the board's folder: refused, nothing written
    page.click("#export-run-btn")
    expect(page.locator("#export-error")).to_contain_text("the board reads and writes only inside its folder")
    page.fill("#export-out", "exports/merged")
    page.click("#export-run-btn")
    expect(page.locator("#export-result")).to_contain_text("parity check: max logit difference")
    expect(page.locator("#exports")).to_contain_text("exports/merged")
    assert (workspace / "exports" / "merged" / "export.json").exists()
    shot(page, shots, "export")
