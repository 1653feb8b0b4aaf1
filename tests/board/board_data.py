"""What the board tests work on: the token, a made-up rule book and Q&A records about it (project's own words)."""
from __future__ import annotations

import json
from pathlib import Path

TOKEN = "board-test-token-0123"

# A made-up residential parking code, in the project's own words: four articles to index and cite.
RULES = """# 示例小区停车公约

第一条 为了让小区道路保持畅通，制定本公约。

第二条 车辆应当停放在划定的车位内，不得占用消防通道。

第三条 占用消防通道停车的，物业可以劝离；拒不驶离的，每次收取违约金二百元。

第四条 夜间二十二时以后，车辆在小区内行驶不得鸣笛。
"""


ASKED = [("第二条", "车能停在消防通道上吗？", "不能。依照《示例小区停车公约》第二条，车辆应停在划定的车位内，不得占用消防通道。"),
         ("第三条", "占了消防通道不肯挪车会怎样？", "依照《示例小区停车公约》第三条，物业可以劝离，拒不驶离的每次收取违约金二百元。"),
         ("第四条", "晚上十点以后能在小区里按喇叭吗？", "不能。依照《示例小区停车公约》第四条，二十二时以后行驶不得鸣笛。")]


def qa(i: int) -> dict:
    article, question, answer = ASKED[i % len(ASKED)]
    return {"messages": [{"role": "user", "content": f"（{i}号楼住户）{question}"},
                         {"role": "assistant", "content": answer}],
            "source": {"document": "示例小区停车公约", "article": article}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
