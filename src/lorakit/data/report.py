"""Presenting a data-check `Report`: a rich terminal summary, Markdown or HTML with histograms, and JSON."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorakit.data.check import CHECKS, Report
from lorakit.io import atomic_path, write_json, write_text

SHOW = 40  # findings listed in the terminal (all of them go to the report files)


def summary_table(report: Report) -> Table:
    """One row per check: severity, how many were found, the first few places."""
    s = report.stats
    kind = {"preference": "preference pairs, ", "kto": "KTO records, "}.get(s.get("kind"), "")
    title = (f"data check: {report.path} ({report.fmt}, {kind}{s.get('parsed', 0)} of {s.get('records', 0)} "
             "records parsed)")
    t = Table(title=title, title_justify="left", show_lines=False)
    t.add_column("check")
    t.add_column("severity")
    t.add_column("found", justify="right")
    t.add_column("first lines", overflow="fold")
    by_code: dict[str, list] = {}
    for f in report.findings:
        by_code.setdefault(f.code, []).append(f)
    for code, (severity, desc) in CHECKS.items():
        found = by_code.get(code, [])
        skipped = (code in ("truncated", "no_supervised") and report.model is None) or \
                  (code in ("leak", "near_leak") and report.eval_path is None)
        colour = "red" if severity == "error" and found else "yellow" if found else "green"
        count = "skipped" if skipped else str(len(found))
        lines = ", ".join(str(f.line) for f in found[:6] if f.line is not None) + (" …" if len(found) > 6 else "")
        t.add_row(desc, severity, f"[{colour}]{count}[/]" if not skipped else "[dim]skipped[/]", lines)
    return t


def stats_table(report: Report) -> Table:
    s = report.stats
    t = Table(title="dataset", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value", overflow="fold")
    langs = s.get("languages", {})
    t.add_row("records", f"{s.get('parsed', 0)} ({s.get('with_system', 0)} with system prompt, "
                         f"{s.get('multi_turn', 0)} multi-turn, {s.get('plain_text', 0)} plain text)")
    t.add_row("languages", f"Chinese {langs.get('zh', 0)}, English {langs.get('en', 0)}, "
                           f"mixed/other {langs.get('other', 0)}")
    t.add_row("characters", _dist(s.get("characters")))
    if s.get("kind", "sft") != "sft":
        t.add_row("kind", {"preference": "preference pairs (prompt, chosen, rejected): stage dpo, orpo, simpo or kto",
                           "kto": "KTO (prompt, reply, desirable or not): stage kto"}[s["kind"]])
    if "labels" in s:
        t.add_row("labels", f"{s['labels']['desirable']} desirable, {s['labels']['undesirable']} undesirable")
    if s.get("tool_calling"):
        t.add_row("tool calling", f"{s['tool_calling']} records call tools")
    if "tokens" in s:
        t.add_row("tokens", _dist(s["tokens"]) + f" (model {report.model})")
        t.add_row("over the cut-off", f"{s.get('over_cutoff', 0)} of {s.get('parsed', 0)} (cut-off {report.cutoff})")
    return t


def _dist(d: dict | None) -> str:
    if not d:
        return "-"
    return f"min {d['min']}, median {d['median']:g}, p95 {d['p95']:g}, max {d['max']}"


def print_report(report: Report, console: Console) -> None:
    console.print(summary_table(report))
    console.print(stats_table(report))
    for f in report.findings[:SHOW]:
        colour = "red" if f.severity == "error" else "yellow"
        console.print(f"[{colour}]{f.severity:7}[/] {f.where()}: {f.message}", highlight=False, soft_wrap=True)
    if len(report.findings) > SHOW:
        console.print(f"… and {len(report.findings) - SHOW} more (write them all with --report or --json)")
    if report.ok and not report.findings:
        console.print("[green]no problems found[/]")
    else:
        mark = "[green]no errors[/]" if report.ok else f"[red]{len(report.errors)} error(s)[/]"
        console.print(f"{mark}, {len(report.warnings)} warning(s)")


# ---------------------------------------------------------------------------- files
def histogram_png(report: Report, path: Path) -> Path:
    """Character (and, with a model, token) length histograms; the cut-off is drawn as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("characters per record", report.char_lengths, None)]
    toks = [n for n in report.token_lengths if n]
    if toks:
        panels.append((f"tokens per record ({report.model})", toks, report.cutoff))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4), squeeze=False)
    for ax, (label, values, cut) in zip(axes[0], panels):
        ax.hist(values or [0], bins=40, color="#4c72b0")
        if cut:
            ax.axvline(cut, color="#c44e52", linestyle="--", label=f"cut-off {cut}")
            ax.legend()
        ax.set_xlabel(label)
        ax.set_ylabel("records")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def markdown(report: Report, image: str | None) -> str:
    s = report.stats
    out = [f"# Data check: `{report.path}`", "",
           f"Format **{report.fmt}**, {s.get('parsed', 0)} of {s.get('records', 0)} records parsed. "
           + ("**No errors.**" if report.ok else f"**{len(report.errors)} error(s)**") +
           f" {len(report.warnings)} warning(s).", "", "| check | severity | found |", "| --- | --- | ---: |"]
    counts = report.counts()
    for code, (sev, desc) in CHECKS.items():
        out.append(f"| {desc} | {sev} | {counts[code]} |")
    out += ["", "## Dataset", "", f"- languages: {s.get('languages')}", f"- characters: {_dist(s.get('characters'))}"]
    if "tokens" in s:
        out += [f"- tokens ({report.model}): {_dist(s['tokens'])}",
                f"- over the cut-off ({report.cutoff}): {s.get('over_cutoff', 0)}"]
    if image:
        out += ["", f"![length histograms]({image})"]
    out += ["", "## Findings", ""]
    if not report.findings:
        out.append("None.")
    else:
        out += ["| where | severity | check | detail |", "| --- | --- | --- | --- |"]
        for f in report.findings:
            out.append(f"| {f.where()} | {f.severity} | {f.code} | {f.message.replace('|', '¦')} |")
    return "\n".join(out) + "\n"


def html_page(report: Report, png: bytes | None) -> str:
    md_rows = "".join(
        f"<tr class='{f.severity}'><td>{html.escape(f.where())}</td><td>{f.severity}</td><td>{f.code}</td>"
        f"<td>{html.escape(f.message)}</td></tr>" for f in report.findings)
    counts = report.counts()
    check_rows = "".join(f"<tr><td>{html.escape(d)}</td><td>{s}</td><td>{counts[c]}</td></tr>"
                         for c, (s, d) in CHECKS.items())
    img = f"<img alt='length histograms' src='data:image/png;base64,{base64.b64encode(png).decode()}'>" if png else ""
    st = report.stats
    verdict = "No errors." if report.ok else f"{len(report.errors)} error(s)."
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data check: {html.escape(report.path)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 8px;text-align:left}}
tr.error td{{color:#b00}}tr.warning td{{color:#960}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style>
</head><body><h1>Data check: <code>{html.escape(report.path)}</code></h1>
<p>Format <b>{report.fmt}</b>, {st.get('parsed', 0)} of {st.get('records', 0)} records parsed. <b>{verdict}</b>
{len(report.warnings)} warning(s).</p>
<table><tr><th>check</th><th>severity</th><th>found</th></tr>{check_rows}</table>
<h2>Dataset</h2><p>languages: {html.escape(str(st.get('languages')))}<br>characters: {_dist(st.get('characters'))}
{('<br>tokens: ' + _dist(st['tokens'])) if 'tokens' in st else ''}</p>{img}
<h2>Findings</h2><table><tr><th>where</th><th>severity</th><th>check</th><th>detail</th></tr>{md_rows}</table>
</body></html>
"""


def write_report(report: Report, path: str | Path) -> Path:
    """Markdown (``.md``) with a PNG beside it, or self-contained HTML (``.html``)."""
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        tmp_png = path.with_name(f".{path.stem}.lengths.png")
        histogram_png(report, tmp_png)
        png = tmp_png.read_bytes()
        tmp_png.unlink()
        return write_text(path, html_page(report, png))
    png_path = path.with_name(f"{path.stem}.lengths.png")
    histogram_png(report, png_path)
    return write_text(path, markdown(report, png_path.name))


def write_json_report(report: Report, path: str | Path) -> Path:
    return write_json(path, report.to_dict())
