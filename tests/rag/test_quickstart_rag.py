"""The quickstart with law texts: index (learning from the training Q&A), RAFT mix, training, four-way table."""
import json

from rich.console import Console

from lorakit.quickstart import quickstart


def test_quickstart_with_documents_trains_on_raft_and_compares_four_ways(tmp_path, small_laws):
    console = Console(file=open(tmp_path / "log.txt", "w"), width=160)  # noqa: SIM115
    verdict = quickstart(model="tiny-random", runs_dir=str(tmp_path / "runs"), name="qs", epochs=0.1,
                         max_new_tokens=8, eval_limit=6, docs=small_laws, general=False, console=console)
    run = tmp_path / "runs" / "qs"
    for f in ("raft.jsonl", "adapter/adapter_config.json", "eval/rag.md", "eval/rag.json", "eval/eval.html",
              "eval/retrieved.jsonl", "report.md", "quickstart.json"):
        assert (run / f).exists(), f
    rows = [json.loads(ln) for ln in (run / "raft.jsonl").read_text(encoding="utf-8").splitlines()]
    raft = [r for r in rows if "raft" in r]
    assert raft and len(rows) - len(raft) == 172  # every plain record stays in the mix
    assert all("参考资料：" in r["messages"][0]["content"] for r in raft)
    saved = json.loads((run / "quickstart.json").read_text())
    assert set(saved["citation_exact"]) == {"base", "base+rag", "qs", "qs+rag"}
    assert "unsupported_figures" in saved and saved["train"]["records"]["train"] == len(rows)
    log = (tmp_path / "log.txt").read_text()
    assert "fine-tuned + RAG" in log and "lorakit rag ask" in log
