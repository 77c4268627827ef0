"""The audit's HTML page: near-duplicate groups, likely label errors and outliers with
thumbnails, and class balance; one self-contained file (thumbnails are data URIs, every text is
escaped), made with the mistakes gallery's pieces (features/reports/mistakes.py)."""

from __future__ import annotations

import html
import os

from features.reports.mistakes import STYLE, thumbnail_uri

SHOWN = 36   # images (or groups) per section

_EXTRA = (".groups{display:flex;flex-wrap:wrap;gap:8px}"
          ".group{border:1px solid #bbb;padding:4px}.group.leak{border-color:#c00}"
          ".group h4{margin:2px 0;font-size:13px}.num td,.num th{border:1px solid #ccc;"
          "padding:2px 8px}.num{border-collapse:collapse}")


def _tile(path: str, root: str, lines: list[str]) -> str:
    """One <figure>: the thumbnail (or why there is none) and escaped caption lines."""
    esc = html.escape
    uri, why = thumbnail_uri(os.path.join(root, path) if root else path)
    picture = (f'<img src="{uri}" alt="{esc(path)}" title="{esc(path)}">' if uri
               else f'<div class="missing">no thumbnail: {esc(why)}</div>')
    caption = "<br>".join(lines + [f"<small>{esc(path)}</small>"])
    return f'<figure class="mistake">{picture}<figcaption>{caption}</figcaption></figure>'


def _groups_section(dups: dict, root: str) -> list[str]:
    esc = html.escape
    groups = dups["groups"]
    out = ["<h2>Near-duplicates</h2>",
           (f"<p>{dups['n_groups']} groups of near-identical images ({dups['n_images']} images); "
           f"{dups['n_cross_split']} groups span more than one split (their val/test members, "
           f"{dups['n_leaked']} images, were seen in training: a leak), {dups['n_mixed_labels']} "
           f"hold more than one class. Pairs score at least {dups['threshold']} "
           "(CSLS of cosine similarity; README, audit).</p>")]
    out.append('<div class="groups">')
    for group in groups[:SHOWN]:
        flags = [w for w, on in (("across splits", group["cross_split"]),
                                 ("mixed classes", group["mixed_labels"])) if on]
        out.append(f'<div class="group{" leak" if group["cross_split"] else ""}"><h4>'
                   f'score {group["score"]:.3f}, cosine {group["cosine"]:.3f}'
                   f'{esc(" - " + ", ".join(flags)) if flags else ""}</h4><div class="mistakes">')
        out += [_tile(m["path"], root, [f'<b>{esc(m["class"])}</b> ({esc(m["split"])})'
                                        + (" kept" if m["keep"] else "")])
                for m in group["members"]]
        out.append("</div></div>")
    out.append("</div>")
    if len(groups) > SHOWN:
        out.append(f"<p>{len(groups) - SHOWN} more groups are in audit.json.</p>")
    return out


def _images_section(title: str, intro: str, rows: list[dict], caption, root: str) -> list[str]:
    out = [f"<h2>{html.escape(title)}</h2>", f"<p>{intro}</p>", '<div class="mistakes">']
    out += [_tile(r["path"], root, caption(r)) for r in rows[:SHOWN]]
    more = [f"<p>The first {SHOWN} of {len(rows)} are shown; all are in audit.json.</p>"]
    return out + ["</div>"] + (more if len(rows) > SHOWN else [])


def _balance_table(balance: dict) -> list[str]:
    esc = html.escape
    splits = list(balance["per_split"])
    head = "".join(f"<th>{esc(s)}</th>" for s in ["class", "all", *splits])
    rows = "".join(f"<tr><td>{esc(c)}</td><td>{n}</td>"
                   + "".join(f"<td>{balance['per_split'][s][c]}</td>" for s in splits) + "</tr>"
                   for c, n in balance["counts"].items())
    return ["<h2>Class balance</h2>",
            f"<p>Largest class / smallest: {balance['imbalance']:.2f}.</p>",
            f'<table class="num"><tr>{head}</tr>{rows}</table>']


def render_audit(result: dict, data_dir: str | None = None) -> str:
    """The whole page from the audit's JSON-able result."""
    esc = html.escape
    root = result["data_dir"] if data_dir is None else data_dir
    labels, outliers = result["label_issues"], result["outliers"]
    body = [f"<h1>Audit of {esc(os.path.basename(result['features']))}</h1>",
            (f"<p>{result['n_images']} images, layer {esc(result['layer'])}, data "
            f"{esc(root)}.</p>")]
    body += _groups_section(result["duplicates"], root)
    body += _images_section(
        "Likely label errors",
        f"{labels['n_flagged']} images whose label the out-of-fold probabilities of a "
        f"{labels['folds']}-fold logistic head contradict (cleanlab, confident learning; CV "
        f"accuracy {labels['cv_accuracy']:.3f}), least likely label first.",
        labels["ranked"], lambda r: [(f"labelled <b>{esc(r['given'])}</b> "
                                     f"({r['given_probability']:.2f})"),
                                     (f"looks like <b>{esc(r['suggested'])}</b> "
                                     f"({r['suggested_probability']:.2f})"),
                                     esc(r["split"])], root)
    body += _images_section(
        "Outliers",
        f"{outliers['n_flagged']} images unlike the images around them (local outlier factor "
        f"over {outliers['k']} neighbours above {outliers['threshold']:.3f}; 1 is ordinary), "
        "most unusual first.",
        outliers["ranked"], lambda r: [f"<b>{esc(r['class'])}</b> ({esc(r['split'])})",
                                       f"outlier factor {r['score']:.3f}"], root)
    body += _balance_table(result["balance"])
    title = f"Audit of {os.path.basename(result['features'])}"
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;max-width:1100px;"
            f"margin:2em auto}}{STYLE}{_EXTRA}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")
