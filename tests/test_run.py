"""`run`: the whole route in one command, and its side-by-side report."""

import json
import os
import re

from bench.gallery import check_page, chromium
from bottleneck.cli import main
from bottleneck.data.synthetic import make_image_folder


def test_run_puts_every_stage_in_one_report(tmp_path, capsys):
    data = make_image_folder(str(tmp_path / "data"), n_per_class=10, size=32)
    out = str(tmp_path / "run")
    code = main(["run", "--data", data, "--backbone", "mobilenet", "--alpha", "0.25",
                 "--weights", "none", "--image-size", "32", "--out-dir", out, "--finetune", "yes",
                 "--epochs", "1", "--heads", "logistic", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["advise"]["route"] == "features+linear"      # 40 images: a small set
    names = [s["name"] for s in result["stages"]]
    assert names[:2] == ["advise", "extract"] and names[-1] == "finetune"
    assert result["stages"][-1]["plots"][0][0] == "training curves"
    html = open(result["report"]["html"]).read()
    md = open(result["report"]["markdown"]).read()
    for name in names:
        assert name in md
    assert html.count("data:image/png;base64,") >= 3    # two confusion matrices and the curves
    with open(os.path.join(out, "fit_report", "metrics.json")) as handle:
        fit_acc = json.load(handle)["accuracy"]
    assert f"{fit_acc:.4f}" in md
    assert abs(result["fit"]["test_accuracy"] - fit_acc) < 1e-12
    assert os.path.isfile(os.path.join(out, "finetuned.keras"))
    # every stage report has its mistakes gallery; report.html embeds them all
    galleries = []
    for stage in ("fit_report", "finetune_report"):
        assert os.path.isfile(os.path.join(out, stage, "mistakes.html"))
        with open(os.path.join(out, stage, "metrics.json")) as handle:
            galleries.append(json.load(handle))
    assert html.count('<section class="gallery">') == 2
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,', html)
    assert len(thumbs) == sum(len(m["top_mistakes"]) for m in galleries)
    assert "## Mistakes" in md and "fit_report/mistakes.html" in md
    if chromium():   # the page in a real browser: every image decodes
        seen = check_page(result["report"]["html"])
        assert len(seen["widths"]) == seen["n_img"] >= 3 + len(thumbs)
        assert all(w > 0 for w in seen["widths"]), seen
