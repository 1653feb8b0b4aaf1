"""The quickstart composes the stage functions end to end; on tiny-random it must write the whole run folder."""
import json

from rich.console import Console
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.quickstart import quickstart


def test_quickstart_on_tiny_random(tmp_path, monkeypatch):
    from lorakit.evaluate import general
    few = general.load_items()[::30]  # the general probe runs in full elsewhere; here, that it is wired in
    monkeypatch.setattr(general, "load_items", lambda: few)
    console = Console(file=open(tmp_path / "log.txt", "w"), width=120)
    verdict = quickstart(model="tiny-random", runs_dir=str(tmp_path / "runs"), name="qs", epochs=1,
                         max_new_tokens=8, eval_limit=4, rag=False, console=console)
    run = tmp_path / "runs" / "qs"
    for f in ("config.yaml", "adapter/adapter_config.json", "metrics.jsonl", "loss.png", "summary.json",
              "eval/eval.html", "eval/eval.md", "eval/eval.json", "eval/answers.jsonl", "report.md",
              "quickstart.json", "eval/general.md", "eval/general.json"):
        assert (run / f).exists(), f
    saved = json.loads((run / "quickstart.json").read_text())
    assert saved["improved"] == verdict["improved"]
    assert set(saved["rouge_l"]) == {"base", "qs"}
    assert saved["train"]["global_step"] == 43  # 172 records / batch 4, one epoch
    # the fine-tuned loss on held-out answers is measured with the same mask as training
    assert saved["loss"]["qs"] < saved["loss"]["base"]
    assert set(saved["general"]) == {"base", "qs"} and saved["general"]["qs"]["n"] == len(few)
    assert "general ability" in (run / "report.md").read_text(encoding="utf-8").lower()
    log = (tmp_path / "log.txt").read_text()
    assert "next:" in log and "lorakit eval" in log


def test_help_lists_every_stage_verb():
    out = CliRunner().invoke(app, ["--help"]).output
    for verb in ("doctor", "models", "data", "train", "eval", "quickstart"):
        assert verb in out
