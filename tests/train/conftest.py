import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from lorakit.models.tiny import build_tiny
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


def qa_rows(n: int = 24) -> list[dict]:
    rows = []
    for i in range(n):
        q = f"第{i}题：超速{i % 5 + 1}0%会被怎样处罚？"
        a = f"根据《道路交通安全法》第九十九条，超速{i % 5 + 1}0%可处罚款{100 + 10 * i}元。"
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                     "source": {"document": "道路交通安全法", "article": "第九十九条"}})
    return rows


@pytest.fixture
def qa_file(tmp_path) -> Path:
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in qa_rows()), encoding="utf-8")
    return p


@pytest.fixture
def base_cfg(tiny_dir, qa_file, tmp_path):
    """Fast fp32 settings for the tiny model (fp32 makes loss comparisons exact)."""
    return {"model": str(tiny_dir), "data": str(qa_file), "runs_dir": str(tmp_path / "runs"), "batch_size": 4,
            "learning_rate": 5e-3, "precision": "fp32", "save_steps": 1000, "epochs": 1}
