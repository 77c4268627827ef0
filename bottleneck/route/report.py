"""The single report of `run`: the stages side by side, as Markdown and as one self-contained HTML
file (plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
import os


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
    "plots": [(title, png path)]}]."""
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

    def fmt(x, digits=4):
        return "-" if x is None else f"{x:.{digits}f}"

    md = ["# bottleneck run report", "", f"Route: **{advice.get('route')}**", "",
          "## Why this route", ""] + [f"- {r}" for r in advice.get("reasons", [])] + [
          "", "## Stages (test split of the cache: the same images for every stage)", "",
          "| stage | seconds | test accuracy | balanced accuracy | macro F1 | note |",
          "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, seconds, m, note in rows:
        md.append(f"| {name} | {fmt(seconds, 1)} | {fmt(m and m.get('accuracy'))} | "
                  f"{fmt(m and m.get('balanced_accuracy'))} | {fmt(m and m.get('macro_f1'))} | "
                  f"{note} |")
    names = [name for name, _, m, _ in rows if m]
    if per_class:
        md += ["", "## Per-class F1", "", "| class | " + " | ".join(names) + " |",
               "| --- |" + " ---: |" * len(names)]
        for cls, scores in per_class.items():
            md.append(f"| {cls} | " + " | ".join(fmt(scores.get(n)) for n in names) + " |")
    md += ["", "## Plots", ""]
    for title, path in images:
        if os.path.isfile(path):
            md += [f"### {title}", "", f"![{title}]({os.path.relpath(path, out_dir)})", ""]
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as handle:
        handle.write("\n".join(md) + "\n")

    body = []
    in_table = False
    for line in md:
        if body and body[-1].startswith("<li>") and not line.startswith("- "):
            body.append("</ul>")
        if line.startswith("|"):
            if set(line.replace("|", "").strip()) <= set("-: "):
                continue
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
            if level == 3:
                title = line[level:].strip()
                src = _png(dict(images).get(title))
                if src:
                    body.append(f'<img alt="{html.escape(title)}" src="{src}" style="max-width:720px">')
        elif line.startswith("- "):
            if not body or not body[-1].startswith("<li>"):
                body.append("<ul>")
            body.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        elif line:
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    if in_table:
        body.append("</table>")
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w") as handle:
        handle.write("<!doctype html><meta charset='utf-8'><title>bottleneck run</title>"
                     "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
                     "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
                     "</style>" + "\n".join(body))
    return {"markdown": md_path, "html": html_path}
