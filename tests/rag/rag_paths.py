"""Where the RAG tests find their material (read at run time; nothing from ../shared is copied here)."""
from __future__ import annotations

from pathlib import Path

LAWS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "laws"
LAW_2021 = "road_traffic_safety_law_2021.md"
CRIME_2000 = "spc_traffic_crime_interpretation_2000.md"


def demo_eval() -> Path:
    from lorakit.quickstart import demo_file
    return demo_file("eval.jsonl")
