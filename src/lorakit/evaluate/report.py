"""Readable evaluation reports: Markdown and HTML side by side, plus machine-readable JSON."""
from __future__ import annotations

import html
from pathlib import Path

from lorakit.io import write_json, write_text

METRIC_HELP = {
    "loss": "mean loss per answer token (teacher-forced; lower is better)",
    "perplexity": "exp(loss)",
    "rouge_l": "ROUGE-L F1 over jieba words",
    "rouge_1": "ROUGE-1 F1 over jieba words",
    "bleu_4": "sentence BLEU-4 over jieba words (smoothed)",
    "exact_match": "answer equals the reference (punctuation and width ignored)",
    "keywords": "share of the reference's key terms present",
    "citation": "cites the reference's article number",
}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def to_markdown(cmp, examples: int = 10) -> str:
    from lorakit.evaluate.compare import METRICS
    names = [s.name for s in cmp.systems]
    lines = [f"# Evaluation: {cmp.meta.get('model')} on {cmp.meta.get('data')}", "",
             f"{cmp.meta.get('n')} held-out questions · greedy decoding, at most {cmp.meta.get('max_new_tokens')} "
             f"new tokens · {cmp.meta.get('precision')}", "",
             "| system | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for s in cmp.systems:
        lines.append(f"| {s.name} | " + " | ".join(_fmt(s.summary.get(m)) for m in METRICS) + " |")
    lines += ["", "Metrics: " + "; ".join(f"**{k}** {v}" for k, v in METRIC_HELP.items()), "",
              "## Side by side", ""]
    for i, q in enumerate(cmp.questions[:examples]):
        lines += [f"### {i + 1}. {q}", "", f"- **reference**: {cmp.references[i]}"]
        for s in cmp.systems:
            lines.append(f"- **{s.name}** (ROUGE-L {s.per_example[i]['rouge_l']:.2f}): {s.answers[i]}")
        lines.append("")
    if len(cmp.questions) > examples:
        lines.append(f"… {len(cmp.questions) - examples} more in eval.html and answers.jsonl")
    del names
    return "\n".join(lines) + "\n"


def _marked(answer: str, figures) -> str:
    """The answer, escaped, with each unsupported figure highlighted."""
    text = html.escape(answer)
    for f in dict.fromkeys(figures or ()):
        text = text.replace(html.escape(f), f"<mark title='stated in no passage shown'>{html.escape(f)}</mark>", 1)
    return text


def to_html(cmp, *, metrics=None, helps=None, passages=None) -> str:
    """Side by side: the metric table, then each question with its reference, the passages shown (RAG), and
    every system's answer with the figures no passage states highlighted."""
    from lorakit.evaluate.compare import METRICS
    metrics = metrics or METRICS
    helps = {**METRIC_HELP, **(helps or {})}
    e = html.escape
    head = "".join(f"<th title='{e(helps.get(m, m))}'>{e(m)}</th>" for m in metrics)
    rows = "".join("<tr><td>" + e(s.name) + "</td>" + "".join(f"<td>{_fmt(s.summary.get(m))}</td>" for m in metrics)
                   + "</tr>" for s in cmp.systems)
    cards = []
    for i, q in enumerate(cmp.questions):
        cols = "".join(f"<div class='ans'><b>{e(s.name)}</b> <span class='m'>ROUGE-L "
                       f"{s.per_example[i]['rouge_l']:.2f}</span><p>{_marked(s.answers[i], s.per_example[i].get('unsupported'))}"
                       "</p></div>" for s in cmp.systems)
        shown = ""
        if passages is not None:
            items = "".join(f"<li><b>{e(label)}</b> {e(text[:300])}</li>" for label, text in passages[i])
            shown = f"<details class='ref'><summary>passages shown ({len(passages[i])})</summary><ol>{items}</ol></details>"
        cards.append(f"<section><h3>{i + 1}. {e(q)}</h3><div class='ref'><b>reference</b><p>"
                     f"{e(cmp.references[i])}</p></div>{shown}<div class='grid'>{cols}</div></section>")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lorakit evaluation</title>
<style>body{{font-family:system-ui,"Noto Sans CJK SC","PingFang SC",sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
section{{border-top:1px solid #ddd;margin-top:1em}}.grid{{display:grid;grid-template-columns:repeat({len(cmp.systems)},1fr);gap:1em}}
.ref{{background:#f3f7f3;padding:.3em .6em}}mark{{background:#fd6;font-weight:bold}}.m{{color:#777;font-size:.85em}}</style></head><body>
<h1>Evaluation: {e(str(cmp.meta.get('model')))}</h1><p>{cmp.meta.get('n')} held-out questions from {e(str(cmp.meta.get('data')))};
greedy decoding, at most {cmp.meta.get('max_new_tokens')} new tokens; {e(str(cmp.meta.get('precision')))}.</p>
<table><tr><th>system</th>{head}</tr>{rows}</table>{''.join(cards)}</body></html>"""


def write_reports(cmp, out_dir: Path, *, html_kw: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", {"meta": cmp.meta, "systems": {s.name: s.summary for s in cmp.systems}})
    rows = []
    for i, q in enumerate(cmp.questions):
        row = {"question": q, "reference": cmp.references[i]}
        for s in cmp.systems:
            row[s.name] = {"answer": s.answers[i], **s.per_example[i]}
        rows.append(row)
    from lorakit.io import write_jsonl
    write_jsonl(out_dir / "answers.jsonl", rows)
    write_text(out_dir / "eval.md", to_markdown(cmp))
    write_text(out_dir / "eval.html", to_html(cmp, **(html_kw or {})))
