"""The board's routes without a browser: the token, the folder boundary, uploads, dataset_info entries, form
errors by field, and how runs started elsewhere are read (process.json, metrics, ETA)."""
from __future__ import annotations

import json
import os
import time

import psutil
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lorakit.board.app import board_token, build_board
from lorakit.board.runs import eta, metric_rows
from lorakit.errors import LorakitError

from board_data import TOKEN, qa, write_jsonl


@pytest.fixture
def folder(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", [qa(i) for i in range(6)])
    return tmp_path


@pytest.fixture
def client(folder):
    c = TestClient(build_board(folder, token=TOKEN, model="tiny-random"))
    c.cookies.set("lorakit_board", TOKEN)
    return c


def test_every_route_needs_the_token(folder):
    c = TestClient(build_board(folder, token=TOKEN))
    assert c.get("/health").status_code == 200
    assert c.get("/api/state").status_code == 401 and "token" in c.get("/api/state").json()["error"]
    assert c.get("/").status_code == 401 and "lorakit board" in c.get("/").text
    assert c.post("/llm/v1/chat/completions", json={}).status_code == 401
    assert c.get("/?token=wrong-token-0000", follow_redirects=False).status_code == 401
    r = c.get(f"/?token={TOKEN}", follow_redirects=False)  # the printed URL: a cookie, and the token leaves the URL
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/api/state").status_code == 200
    assert TestClient(build_board(folder, token=TOKEN)).get(
        "/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_loopback_by_default_and_a_password_when_exposed(folder):
    a, b = board_token("127.0.0.1", None), board_token("127.0.0.1", None)
    assert a != b and len(a) >= 20
    with pytest.raises(LorakitError, match="reachable from other machines") as e:
        board_token("0.0.0.0", None)
    assert e.value.field == "host"
    with pytest.raises(LorakitError, match="at least 12 characters"):
        board_token("0.0.0.0", "short")
    assert board_token("0.0.0.0", "a-long-enough-password") == "a-long-enough-password"
    from lorakit.cli import app
    res = CliRunner().invoke(app, ["board", "--dir", str(folder), "--host", "0.0.0.0"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "--token" in res.output and "Traceback" not in res.output


def test_nothing_outside_the_folder_and_uploads_land_whole(client, folder):
    r = client.post("/api/data/check", json={"file": "/etc/hostname"})
    assert r.status_code == 400 and r.json()["field"] == "file"
    assert r.json()["error"] == (f"/etc/hostname, field 'file': the board reads and writes only inside its folder. "
                                 f"Choose a path under {folder.resolve()}.")
    assert client.post("/api/data/convert", json={"file": "data/train.jsonl", "out": "../escape.jsonl",
                                                  "to": "alpaca"}).status_code == 400
    assert not (folder.parent / "escape.jsonl").exists()
    r = client.post("/api/upload?name=../../x.sh", content=b"echo")
    assert r.status_code == 400 and "not a data file name" in r.json()["error"]
    body = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in [qa(1), qa(1)]).encode()
    r = client.post("/api/upload?name=mine.jsonl", content=body)
    assert r.json() == {"path": "uploads/mine.jsonl"} and (folder / "uploads" / "mine.jsonl").read_bytes() == body
    assert [p.name for p in (folder / "uploads").iterdir()] == ["mine.jsonl"]  # no temporary left behind
    rep = client.post("/api/data/check", json={"file": "uploads/mine.jsonl"}).json()
    assert rep["counts"]["duplicate"] == 1 and rep["records"]["1"]["line"] == 2
    r = client.post("/api/data/split", json={"file": "data/train.jsonl", "out_dir": "data", "eval": "2"})
    assert r.status_code == 400 and "would overwrite the file it splits" in r.json()["error"]
    assert len((folder / "data" / "train.jsonl").read_text().splitlines()) == 6
    # a bad request body is the same one paragraph, naming the field
    r = client.post("/api/data/check", json={"threshold": "high"})
    assert r.status_code == 400 and r.json()["field"] == "file"


def test_dataset_info_entries_are_files_to_pick(client, folder):
    write_jsonl(folder / "lf" / "a.jsonl", [{"instruction": "问题一", "input": "", "output": "回答一"}] * 2)
    write_jsonl(folder / "lf" / "b.jsonl", [{"instruction": "问题二", "input": "", "output": "回答二"}])
    (folder / "lf" / "dataset_info.json").write_text(json.dumps(
        {"first": {"file_name": "a.jsonl"}, "second": {"file_name": "b.jsonl"}}), encoding="utf-8")
    files = client.get("/api/state").json()["data"]
    assert "lf/dataset_info.json#first" in files and "lf/dataset_info.json#second" in files
    rep = client.post("/api/data/check", json={"file": "lf/dataset_info.json#first"}).json()
    assert rep["stats"]["parsed"] == 2 and rep["counts"]["duplicate"] == 1
    r = client.post("/api/data/check", json={"file": "lf/dataset_info.json"})
    assert r.status_code == 400 and "registers several datasets" in r.json()["error"]


def test_training_form_errors_come_back_by_field(client, tiny_model):
    r = client.post("/api/train/plan", json={"config": {"model": str(tiny_model), "data": "data/train.jsonl",
                                                        "lora": {"r": 0}, "scheduler": "sometimes"}})
    body = r.json()
    assert r.status_code == 400 and set(body["fields"]) == {"lora.r", "scheduler"}
    assert body["error"].startswith("the training form: invalid configuration: ")
    r = client.post("/api/train/plan", json={"config": {"model": str(tiny_model), "data": "data/none.jsonl"}})
    assert r.status_code == 400 and r.json()["fields"] == {"data": "data/none.jsonl, field 'data': not found."}
    plan = client.post("/api/train/plan", json={"config": {"model": str(tiny_model), "data": "data/train.jsonl",
                                                           "max_steps": 7}}).json()
    assert plan["summary"]["steps"] == 7 and "消防通道" in plan["html"]  # the mask view, characters whole
    assert client.post("/api/train/start", json={"config": {"data": "data/train.jsonl", "epochs": 0}}).status_code == 400
    bad = client.app.state.board.root / "data" / "bad.jsonl"
    write_jsonl(bad, [qa(0), {"messages": [{"role": "assistant", "content": "先答"}, {"role": "user", "content": "后问"}]}])
    r = client.post("/api/train/start", json={"config": {"model": str(tiny_model), "data": "data/bad.jsonl"}})
    assert r.status_code == 400 and r.json()["fields"] == {"data": r.json()["error"]}
    assert r.json()["error"].startswith(f"{bad}:2, field 'messages': the first turn must be a user turn.")
    assert not (client.app.state.board.runs.dir).exists()  # nothing started, nothing written


def test_runs_started_elsewhere_are_read_from_their_folder(client, folder):
    run = folder / "runs" / "from-cli"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data: x\n", encoding="utf-8")
    rows = [{"step": s, "elapsed_s": 2.0 * s, "loss": 3.0 - 0.1 * s} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "elap',
                                       encoding="utf-8")  # a line still being written is not read
    got, offset = metric_rows(run)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5] and metric_rows(run, offset)[0] == []
    me = psutil.Process()
    (run / "process.json").write_text(json.dumps({"pid": os.getpid(), "create_time": me.create_time(),
                                                  "max_steps": 20, "started": time.time()}), encoding="utf-8")
    st = client.get("/api/runs").json()[0]
    assert (st["name"], st["state"], st["step"], st["max_steps"], st["eta_s"]) == ("from-cli", "running", 5, 20, 30.0)
    # the same pid with another start time is another process: the run is not running
    (run / "process.json").write_text(json.dumps({"pid": os.getpid(), "create_time": 1.0, "max_steps": 20}))
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "global_step": 5, "max_steps": 20}))
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    st = client.get("/api/runs").json()[0]
    assert st["state"] == "interrupted" and st["resumable"] and st["eta_s"] is None
    r = client.post("/api/runs/from-cli/stop")
    assert r.status_code == 400 and "not training" in r.json()["error"]
    assert client.post("/api/runs/nope/resume").status_code == 400


def test_eta_follows_the_current_process():
    first = [{"step": s, "elapsed_s": float(s)} for s in range(1, 11)]  # 1 step/s, then resumed at 2 steps/s
    resumed = [{"step": 10 + s, "elapsed_s": 0.5 * s} for s in range(1, 5)]
    assert eta(first, 20) == 10.0
    assert eta(first + resumed, 20) == 3.0
    assert eta(first[:1], 20) is None and eta(first, None) is None


def test_chat_before_a_model_is_loaded_says_so(client):
    r = client.post("/llm/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "你好"}]})
    assert r.status_code == 400 and "no model loaded" in r.json()["error"]


def finished(client, view, limit_s: float = 120):
    """Poll a job until it is done (bounded), as the page does."""
    deadline = time.time() + limit_s
    while view["state"] in ("queued", "running"):
        assert time.time() < deadline, f"job {view['kind']} still {view['state']} after {limit_s} s"
        time.sleep(0.2)
        view = client.get(f"/api/jobs/{view['id']}").json()
    return view


def test_build_with_progress_and_the_four_way_comparison(workspace, trained_run):
    c = TestClient(build_board(workspace, token=TOKEN, model=str(workspace / "models" / "tiny")))
    c.cookies.set("lorakit_board", TOKEN)
    view = finished(c, c.post("/api/data/build", json={"docs": ["docs/parking.md"], "out": "data/built.jsonl",
                                                        "templates": 1}).json())
    assert view["state"] == "done" and view["result"]["chunks"] == 4 and view["result"]["records"] == 4
    # a local model writing pairs reports progress per batch of chunks (the tiny model's pairs are noise)
    view = finished(c, c.post("/api/data/build", json={"docs": ["docs/parking.md"], "out": "data/built-lm.jsonl",
                                                        "templates": 1, "model": "models/tiny", "pairs": 1,
                                                        "batch_size": 2, "max_new_tokens": 8}).json())
    assert view["state"] == "done", view["error"]
    assert view["progress"]["done"] == view["progress"]["total"] == 4 and view["result"]["failed_chunks"] == 4
    bad = finished(c, c.post("/api/data/build", json={"docs": ["docs"], "out": "data/x.jsonl"}).json())
    assert bad["state"] == "failed" and bad["error"] and not (workspace / "data" / "x.jsonl").exists()
    view = finished(c, c.post("/api/eval", json={"adapters": ["cli-run"], "data": "data/eval.jsonl",
                                                  "index": "index", "limit": 2, "max_new_tokens": 4}).json())
    assert view["state"] == "done", view["error"]
    assert list(view["result"]["systems"]) == ["base", "base+rag", "cli-run", "cli-run+rag"]
    assert (workspace / view["result"]["report"]).exists()
    assert c.post("/api/eval", json={"data": "data/eval.jsonl", "include_base": False}).json()["field"] == "adapters"
