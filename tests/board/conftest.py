"""Fixtures for the board: a work folder with the tiny model, data (one planted duplicate), a small rule book
written by the project and its BM25 index, a trained run, the board served on loopback, and headless Chromium.

Chromium is Debian's (``make test`` installs it: see the Makefile's ``browser`` target); Playwright drives it
over its own pipe. The flags are the ones that work on this project's machines: no sandbox (root), no GPU,
and no background networking (the closed network refuses those connections).
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from board_data import RULES, TOKEN, qa, write_jsonl

CHROMIUM = os.environ.get("LORAKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_model) -> Path:
    """The board's folder: models/tiny, data/train.jsonl (line 5 repeats line 2), data/eval.jsonl, the rule
    book and its index."""
    from lorakit.rag.index import build_index
    ws = tmp_path_factory.mktemp("board")
    shutil.copytree(tiny_model, ws / "models" / "tiny")
    rows = [qa(i) for i in range(12)]
    rows.insert(4, rows[1])  # the planted duplicate: line 5 is line 2 again
    write_jsonl(ws / "data" / "train.jsonl", rows)
    write_jsonl(ws / "data" / "eval.jsonl", [qa(i) for i in range(20, 23)])
    (ws / "docs").mkdir()
    (ws / "docs" / "parking.md").write_text(RULES, encoding="utf-8")
    build_index([ws / "docs" / "parking.md"], ws / "index", dense=False)
    return ws


@pytest.fixture(scope="session")
def trained_run(workspace) -> Path:
    """A run trained outside the board (as from the CLI): the board must list it and use its adapter."""
    from lorakit.config import TrainConfig
    from lorakit.train.recipe import train
    res = train(TrainConfig(model=str(workspace / "models" / "tiny"), data=str(workspace / "data" / "train.jsonl"),
                            runs_dir=str(workspace / "runs"), name="cli-run", max_steps=2, learning_rate=5e-2,
                            precision="fp32", save_steps=1000))
    return res.run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def board_url(workspace):
    """The board on 127.0.0.1 in a thread of the test process (uvicorn, stopped at the end of the session)."""
    import uvicorn

    from lorakit.board.app import build_board
    app = build_board(workspace, token=TOKEN, model=str(workspace / "models" / "tiny"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the board did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    app.state.board.jobs.shutdown()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import expect, sync_playwright
    # Upper bounds for a machine whose cores other jobs share (a dry run, a model load); passing runs take far less.
    expect.set_options(timeout=60_000)
    assert Path(CHROMIUM).exists(), (f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
                                     "(apt-get install chromium); or set LORAKIT_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, board_url):
    """A signed-in page: the printed address (with its token) sets the cookie and leaves the address bar."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(f"{board_url}/?token={TOKEN}")
    assert "token=" not in pg.url
    yield pg
    ctx.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: LORAKIT_BOARD_SCREENSHOTS (`make screenshots` points it at docs/board), else a
    temporary folder."""
    out = os.environ.get("LORAKIT_BOARD_SCREENSHOTS")
    path = Path(out) if out else tmp_path_factory.mktemp("shots")
    path.mkdir(parents=True, exist_ok=True)
    return path
