"""The mistakes gallery of every stage report: the test images a model got most confidently wrong,
and the class pairs it confuses most (like fastai's `plot_top_losses` and `most_confused`).

Pure functions, shared by fit's report (features/reports/metrics.py), finetune's and run's:
`gallery_data` picks the mistakes and pairs (JSON-ready, relative paths, for metrics.json);
`render_fragment` turns that into an HTML fragment with thumbnails embedded as base64 JPEG data
URIs, so a report stays one self-contained file; `render_page` wraps it as a whole page. An image
that cannot be read when the report is written (the data moved) is shown without a thumbnail,
with the reason, never an error. The gallery is capped (`LIMIT`), and the page says so, so that a
10,000-image test split still gives a light page.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

LIMIT = 36          # images in a gallery
PAIRS_LIMIT = 10    # rows of the most-confused table
THUMB_PX = 96       # longest side of a thumbnail
JPEG_QUALITY = 75


def top_mistakes(y_true, proba, limit: int = LIMIT) -> np.ndarray:
    """Positions (into y_true/proba) of the wrong predictions, most confident first: ordered by
    the probability of the predicted class, descending; ties by position. At most `limit`."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    if not len(y_true):
        return np.empty(0, dtype=int)
    pred = np.argmax(proba, axis=1)
    wrong = np.flatnonzero(pred != y_true)
    confidence = proba[wrong, pred[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order][:max(0, int(limit))]


def most_confused(matrix, class_names, limit: int | None = PAIRS_LIMIT) -> list[dict]:
    """The off-diagonal cells of a confusion matrix (rows true, columns predicted) that are not
    zero, as {"true", "predicted", "count"}, largest count first (ties in matrix order)."""
    matrix = np.asarray(matrix)
    pairs = [{"true": class_names[i], "predicted": class_names[j], "count": int(matrix[i, j])}
             for i in range(matrix.shape[0]) for j in range(matrix.shape[1])
             if i != j and matrix[i, j] > 0]
    pairs.sort(key=lambda p: -p["count"])     # stable: ties keep matrix order
    return pairs if limit is None else pairs[:limit]


def gallery_data(y_true, proba, class_names, *, paths, data_dir: str = "",
                 limit: int = LIMIT, pairs_limit: int = PAIRS_LIMIT) -> dict:
    """What metrics.json records of the mistakes: `top_mistakes` (relative `path`, `true`,
    `predicted`, `probability` of the prediction, `true_probability`), `most_confused`, and
    `gallery` (data_dir, counts and caps, for the pages)."""
    from sklearn.metrics import confusion_matrix

    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    if len(paths) != len(y_true):
        raise ValueError(f"{len(paths)} paths for {len(y_true)} test rows")
    pred = np.argmax(proba, axis=1) if len(y_true) else np.empty(0, dtype=int)
    chosen = top_mistakes(y_true, proba, limit)
    mistakes = [{"path": str(paths[i]), "true": class_names[int(y_true[i])],
                 "predicted": class_names[int(pred[i])],
                 "probability": float(proba[i, pred[i]]),
                 "true_probability": float(proba[i, y_true[i]])} for i in chosen]
    matrix = confusion_matrix(y_true, pred, labels=np.arange(len(class_names)))
    pairs = most_confused(matrix, class_names, limit=None)
    return {"top_mistakes": mistakes, "most_confused": pairs[:pairs_limit],
            "gallery": {"data_dir": data_dir, "n_test": len(y_true),
                        "n_wrong": int(np.sum(pred != y_true)), "limit": int(limit),
                        "n_pairs": len(pairs), "pairs_limit": int(pairs_limit)}}


def thumbnail_uri(path: str, size: int = THUMB_PX) -> tuple[str | None, str]:
    """(a data:image/jpeg;base64 URI of a small thumbnail, "") or (None, why not): a missing,
    unreadable or corrupt image never raises."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.seek(0)
            image.draft("RGB", (size, size))   # JPEG: decode at a reduced scale, much faster
            thumb = image.convert("RGB")
            thumb.thumbnail((size, size))
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    except FileNotFoundError:
        return None, "image not found"
    except Exception as exc:   # noqa: BLE001 - Pillow raises many kinds on bad files
        return None, f"image unreadable ({type(exc).__name__})"
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


STYLE = (".mistakes{display:flex;flex-wrap:wrap;gap:8px}"
         ".mistake{width:132px;margin:0;font-size:12px;border:1px solid #ddd;padding:4px}"
         ".mistake img{display:block;margin:auto;width:96px;height:96px;object-fit:contain}"
         ".mistake .missing{height:88px;background:#f4f4f4;color:#777;padding:4px;"
         "overflow-wrap:anywhere}"
         ".mistake figcaption{overflow-wrap:anywhere}"
         ".confused{border-collapse:collapse}.confused td,.confused th{border:1px solid #ccc;"
         "padding:2px 8px}")


def render_fragment(data: dict, *, data_dir: str | None = None, heading: str = "h2",
                    title: str = "") -> str:
    """An HTML fragment (escaped text, thumbnails embedded) from `gallery_data`'s dict or a
    metrics.json that holds its keys; `data_dir` overrides the recorded data folder."""
    meta = data.get("gallery") or {}
    mistakes = data.get("top_mistakes") or []
    root = meta.get("data_dir", "") if data_dir is None else data_dir
    sub = f"h{min(6, int(heading[1:]) + 1)}"
    n_wrong, limit = meta.get("n_wrong", len(mistakes)), meta.get("limit", len(mistakes))
    out = [f'<section class="gallery"><{heading}>{html.escape(title or "Mistakes")}</{heading}>',
           f"<{sub}>Most confident mistakes</{sub}>"]
    if not mistakes:
        out.append(f"<p>No mistakes on the {meta.get('n_test', 0)} test images.</p>")
    else:
        capped = (f" (the gallery is capped at {limit} images)" if n_wrong > len(mistakes) else "")
        out.append(f"<p>The {len(mistakes)} wrong predictions with the highest probability, of "
                   f"{n_wrong} wrong among {meta.get('n_test', '?')} test images{capped}. "
                   "Each shows the true class (with the probability the model gave it), the "
                   "predicted class and its probability, and the image's path.</p>")
        figures = [_figure(m, root) for m in mistakes]
        out += ['<div class="mistakes">'] + [f for f, _ in figures] + ["</div>"]
        missing = sum(not shown for _, shown in figures)
        if missing:
            out.append(f"<p>{missing} of {len(mistakes)} images could not be read from "
                       f"{html.escape(root or '.')} when this report was written (moved or "
                       "deleted?); they are listed without a thumbnail.</p>")
    out += [f"<{sub}>Most confused classes</{sub}>", _pairs_table(data, meta), "</section>"]
    return "\n".join(out)


def _figure(mistake: dict, root: str) -> tuple[str, bool]:
    """(one mistake's <figure>, whether its thumbnail could be made)."""
    esc = html.escape
    uri, why = thumbnail_uri(os.path.join(root, mistake["path"]) if root else mistake["path"])
    if uri:
        picture = f'<img src="{uri}" alt="{esc(mistake["path"])}" title="{esc(mistake["path"])}">'
    else:
        picture = f'<div class="missing">no thumbnail: {esc(why)}</div>'
    return (f'<figure class="mistake">{picture}<figcaption>'
            f'true <b>{esc(mistake["true"])}</b> ({mistake["true_probability"]:.3f})<br>'
            f'predicted <b>{esc(mistake["predicted"])}</b> {mistake["probability"]:.3f}<br>'
            f'<small>{esc(mistake["path"])}</small></figcaption></figure>'), uri is not None


def _pairs_table(data: dict, meta: dict) -> str:
    pairs = data.get("most_confused") or []
    if not pairs:
        return "<p>None: every test image was classified correctly.</p>"
    n_pairs = meta.get("n_pairs", len(pairs))
    more = f" ({len(pairs)} of {n_pairs} pairs shown)" if n_pairs > len(pairs) else ""
    esc = html.escape
    return (f"<p>Test images of the true class predicted as another{more}.</p>\n"
            '<table class="confused"><tr><th>true</th><th>predicted</th><th>count</th></tr>'
            + "".join(f"<tr><td>{esc(p['true'])}</td><td>{esc(p['predicted'])}</td>"
                      f"<td>{p['count']}</td></tr>" for p in pairs) + "</table>")


def render_page(data: dict, title: str, *, data_dir: str | None = None) -> str:
    """A whole, self-contained HTML page of the gallery (a report folder's mistakes.html)."""
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
            f"max-width:960px;margin:2em auto}}{STYLE}</style></head><body>\n"
            + render_fragment(data, data_dir=data_dir, heading="h1", title=title)
            + "\n</body></html>\n")
