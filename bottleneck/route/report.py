"""The single report of `run`: the stages side by side, as Markdown and as one self-contained HTML
file (plots embedded as base64 PNG, each stage's mistakes gallery as base64 JPEG thumbnails)."""

from __future__ import annotations

import base64
import html
import json
import os

from features.atomic import write_text
from features.reports.mistakes import STYLE as MISTAKES_STYLE
from features.reports.mistakes import render_fragment


def _metrics(directory: str | None) -> dict | None:
    path = os.path.join(directory or "", "metrics.json")
    if not directory or not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _png(path: str | None) -> str | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode()


def write_run_report(out_dir: str, *, advice: dict, stages: list[dict]) -> dict:
    """stages: [{"name", "seconds", "report_dir" (with metrics.json), "note",
    "plots": [(title, png path)]}]. Writes report.md and report.html; returns their paths."""
    rows, per_class, images = _collect(stages)
    md = _markdown(out_dir, advice, rows, per_class, images)
    galleries = [(stage["name"], stage["report_dir"], m) for stage, (_, _, m, _) in
                 zip(stages, rows) if m and "top_mistakes" in m]
    md_path = os.path.join(out_dir, "report.md")
    write_text(md_path, "\n".join(md + _mistakes_markdown(out_dir, galleries)) + "\n")
    html_path = os.path.join(out_dir, "report.html")
    write_text(html_path, "<!doctype html><meta charset='utf-8'><title>bottleneck run</title>"
                          "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
                          "table{border-collapse:collapse}td,th{border:1px solid #ccc;"
                          f"padding:4px 8px}}{MISTAKES_STYLE}</style>"
                          + "\n".join(_html(md, dict(images)))
                          + ("\n<h2>Mistakes</h2>" if galleries else "")
                          + "".join(f"\n{render_fragment(m, heading='h3', title=name)}"
                                    for name, _, m in galleries))
    return {"markdown": md_path, "html": html_path}


def _mistakes_markdown(out_dir: str, galleries) -> list[str]:
    """The mistakes section of report.md: each stage's most-confused pairs and a link to its
    gallery (report.html embeds the galleries themselves)."""
    if not galleries:
        return []
    md = ["## Mistakes", "",
          ("The test images each stage got most confidently wrong, with thumbnails, are in "
           "report.html and in each stage's mistakes.html."), ""]
    for name, report_dir, m in galleries:
        meta = m.get("gallery", {})
        page = os.path.join(report_dir, "mistakes.html")
        md += [f"### {name}", "",
               f"{meta.get('n_wrong', '?')} of {meta.get('n_test', '?')} test images wrong"
               + (f"; gallery: [{os.path.relpath(page, out_dir)}]"
                  f"({os.path.relpath(page, out_dir)})" if os.path.isfile(page) else ""), ""]
        if m.get("most_confused"):
            md += ["| true | predicted | count |", "| --- | --- | ---: |"]
            md += [f"| {p['true']} | {p['predicted']} | {p['count']} |"
                   for p in m["most_confused"]]
            md.append("")
    return md


def _collect(stages):
    """(table rows, {class: {stage: F1}}, [(plot title, png path)]) from the stages' reports."""
    rows, per_class, images = [], {}, []
    for stage in stages:
        m = _metrics(stage.get("report_dir"))
        rows.append((stage["name"], stage.get("seconds"), m, stage.get("note", "")))
        if m:
            for cls, v in m.get("per_class", {}).items():
                per_class.setdefault(cls, {})[stage["name"]] = v.get("f1")
            images.append((f"{stage['name']}: confusion matrix",
                           os.path.join(stage["report_dir"], "confusion_matrix.png")))
        for title, path in stage.get("plots", []):
            images.append((f"{stage['name']}: {title}", path))
    return rows, per_class, images


def _fmt(x, digits=4):
    return "-" if x is None else f"{x:.{digits}f}"


def _markdown(out_dir, advice, rows, per_class, images) -> list[str]:
    md = ["# bottleneck run report", "", f"Route: **{advice.get('route')}**", "",
          "## Why this route", ""] + [f"- {r}" for r in advice.get("reasons", [])] + [
          "", "## Stages (test split of the cache: the same images for every stage)", "",
          "| stage | seconds | test accuracy | balanced accuracy | macro F1 | note |",
          "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, seconds, m, note in rows:
        md.append(f"| {name} | {_fmt(seconds, 1)} | {_fmt(m and m.get('accuracy'))} | "
                  f"{_fmt(m and m.get('balanced_accuracy'))} | {_fmt(m and m.get('macro_f1'))} "
                  f"| {note} |")
    names = [name for name, _, m, _ in rows if m]
    if per_class:
        md += ["", "## Per-class F1", "", "| class | " + " | ".join(names) + " |",
               "| --- |" + " ---: |" * len(names)]
        for cls, scores in per_class.items():
            md.append(f"| {cls} | " + " | ".join(_fmt(scores.get(n)) for n in names) + " |")
    md += ["", "## Plots", ""]
    for title, path in images:
        if os.path.isfile(path):
            md += [f"### {title}", "", f"![{title}]({os.path.relpath(path, out_dir)})", ""]
    return md


def _html(md: list[str], images: dict) -> list[str]:
    """The Markdown lines as HTML, plots embedded (one self-contained file)."""
    body, in_table = [], False
    for line in md:
        if body and body[-1].startswith("<li>") and not line.startswith("- "):
            body.append("</ul>")
        if line.startswith("|"):
            if not set(line.replace("|", "").strip()) <= set("-: "):
                if not in_table:
                    body.append("<table>")
                tag = "td" if in_table else "th"
                cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
                body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
                in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        body.extend(_html_line(line, body, images))
    if in_table:
        body.append("</table>")
    return body


def _html_line(line: str, body: list[str], images: dict) -> list[str]:
    if line.startswith("![") or not line:
        return []
    if line.startswith("#"):
        level = len(line) - len(line.lstrip("#"))
        title = line[level:].strip()
        out = [f"<h{level}>{html.escape(title)}</h{level}>"]
        src = _png(images.get(title)) if level == 3 else None
        if src:
            out.append(f'<img alt="{html.escape(title)}" src="{src}" style="max-width:720px">')
        return out
    if line.startswith("- "):
        opening = [] if body and body[-1].startswith("<li>") else ["<ul>"]
        return opening + [f"<li>{html.escape(line[2:])}</li>"]
    return [f"<p>{html.escape(line).replace('**', '')}</p>"]
