"""Serving tests share one way to run an app over real HTTP (uvicorn in a thread on a free loopback port) and one
adapter that has learned to answer and stop."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def stopping_run(tmp_path_factory):
    """(tiny model, run folder, data): an adapter trained on a few short answers until its greedy answers are those
    answers followed by end-of-turn (100 steps: fewer, or a higher rate, collapse to an empty answer)."""
    from lorakit.config import TrainConfig
    from lorakit.models.tiny import build_tiny
    from lorakit.train import recipe
    root = tmp_path_factory.mktemp("stopping")
    model = build_tiny(root / "model")
    rows = [{"messages": [{"role": "user", "content": f"第{i % 4}题：闯红灯扣几分？"},
                          {"role": "assistant", "content": f"记{6 + i % 4}分。"}]} for i in range(16)]
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    res = recipe.train(TrainConfig(model=str(model), data=str(data), eval_data=str(data), runs_dir=str(root / "runs"),
                                   name="law", max_steps=100, learning_rate=1e-2, seed=1, precision="fp32",
                                   save_steps=1000, lora={"r": 16, "alpha": 32}))
    return model, res.run_dir, data


@pytest.fixture(scope="module")
def http_server():
    """``start(app)`` → a running ``lorakit.serve.server.Served`` on 127.0.0.1, stopped after the module."""
    from lorakit.serve.server import Served
    started = []

    def start(app):
        started.append(Served(app))
        return started[-1]

    yield start
    for s in started:
        s.stop()
