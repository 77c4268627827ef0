"""The design card's three commands, verbatim, in a fresh folder holding only data/<class>/*.jpg;
and the leaderboard that decides best.joblib."""

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

from bottleneck.data.synthetic import make_image_folder
from features.heads.headfile import load_head
from features.heads.run import FitOptions, fit_one
from features.reports import leaderboard

from .helpers import blobs, run_cli, write_synthetic_cache

SMALL = ("--weights", "none", "--image-size", "32")   # what a test adds to `extract`
CACHE = os.path.join("features", "data_vgg16_block5_pool_avg_32.h5")


def cli(folder, *args):
    proc = run_cli(*args, cwd=str(folder), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def rows(folder) -> list[dict]:
    with open(os.path.join(folder, "leaderboard.json")) as handle:
        return json.load(handle)["rows"]


def origin(model) -> dict:
    """What a fine-tuned .keras records of the head it started from."""
    with zipfile.ZipFile(model) as archive:
        return json.loads(archive.read("bottleneck.json"))["info"]


def grey_folder(root) -> str:
    """Flat grey JPEGs: 'ends' at levels 150 and 250, 'middle' at 200. A kernel SVM separates
    them; a linear head on one PCA component (the brightness axis) cannot."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, levels in (("ends", (150, 250)), ("middle", (200,))):
        os.makedirs(os.path.join(root, name))
        for i in range(16):
            level = levels[i % len(levels)] + rng.uniform(-4, 4)
            pixels = np.clip(level + rng.normal(0, 2, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i:02d}.jpg"))
    return root


def test_the_three_commands_work_as_written(tmp_path):
    folder = tmp_path / "card"
    make_image_folder(str(folder / "data"), n_per_class=8, size=32, ext=".jpg")
    assert os.listdir(folder) == ["data"]

    extracted = cli(folder, "extract", "--layer", "block5_pool", *SMALL)
    fitted = cli(folder, "fit-svm")
    tuned = cli(folder, "finetune", "--from-head", "best.joblib", "--epochs", "1")

    assert "data: ./data (no --data given)" in extracted.stdout
    assert os.path.isfile(folder / CACHE)                   # vgg16, the default backbone
    board = rows(folder)
    assert [(r["kind"], r["file"], r["transplantable"]) for r in board] == [
        ("svm", "svm.joblib", True)]
    head = load_head(str(folder / "svm.joblib"))
    assert board[0]["cv_mean"] == head["scores"]["cv"]["mean"]
    assert board[0]["cv_std"] == head["scores"]["cv"]["std"]
    assert board[0]["test_accuracy"] == head["scores"]["test"]["accuracy"]
    assert board[0]["cache"] == os.path.realpath(folder / CACHE)
    assert board[0]["data_id"] == head["provenance"].data_id
    assert sha256(folder / "best.joblib") == sha256(folder / "svm.joblib") == board[0]["sha256"]
    assert "best so far on this cache (1 head(s) on the leaderboard): svm" in fitted.stdout
    assert "transplant check" in tuned.stdout and "kernel SVM" not in tuned.stdout
    assert origin(folder / "finetuned.keras")["from_head"] == "best.joblib"
    assert origin(folder / "finetuned.keras")["head_kind"] == "svm"


def test_a_kernel_svm_best_fine_tunes_the_best_transplantable_head(tmp_path):
    folder = tmp_path / "card"
    grey_folder(str(folder / "data"))
    cli(folder, "extract", "--layer", "block5_pool", *SMALL)
    weak = json.loads(cli(folder, "fit-logistic", "--pca", "1", "--json").stdout)
    kernel = json.loads(cli(folder, "fit-svm", "--kernel", "rbf", "--json").stdout)

    assert kernel["cv_score"] > weak["cv_score"] + 0.2     # 1.0 against about 0.5
    assert kernel["best"] == os.path.join(os.path.realpath(folder), "best.joblib")
    board = kernel["leaderboard"]
    assert board == rows(folder)
    assert [(r["kind"], r["file"]) for r in board] == [("logistic", "logistic.joblib"),
                                                       ("svm-rbf", "svm-rbf.joblib")]
    assert [r["cv_mean"] for r in board] == [weak["cv_score"], kernel["cv_score"]]
    assert [r["test_accuracy"] for r in board] == [weak["test_accuracy"],
                                                   kernel["test_accuracy"]]
    assert sha256(folder / "best.joblib") == sha256(folder / "svm-rbf.joblib")

    tuned = cli(folder, "finetune", "--from-head", "best.joblib", "--epochs", "1", "--json")
    said = [line for line in tuned.stderr.splitlines() if "kernel SVM" in line]
    assert len(said) == 1 and said[0].startswith("best.joblib is a svm-rbf head")
    assert "logistic.joblib (logistic, cv" in said[0]
    result = json.loads(tuned.stdout)
    assert result["head_kind"] == "logistic"
    assert result["from_head"] == os.path.join(os.path.realpath(folder), "logistic.joblib")


# ------------------------------------------------------------------ the leaderboard on its own

def fit(kind, cache, out, **kw):
    return fit_one(kind, FitOptions(features=cache, out=str(out), folds=3, **kw), lambda *a: None)


@pytest.fixture()
def caches(tmp_path):
    """An easy cache and a hard one (labels shuffled) of the same shape."""
    X, y = blobs(n_per_class=20, k=3, d=8)
    easy = write_synthetic_cache(tmp_path / "easy.h5", {"a": X}, y, ["p", "q", "r"])
    shuffled = np.random.default_rng(1).permutation(y)
    hard = write_synthetic_cache(tmp_path / "hard.h5", {"a": X}, shuffled, ["p", "q", "r"])
    return easy, hard


def test_a_head_of_another_cache_never_becomes_best_for_this_one(caches, tmp_path):
    easy, hard = caches
    first = fit("logistic", easy, tmp_path / "easy.joblib")
    second = fit("logistic", hard, tmp_path / "hard.joblib")
    assert first["cv_score"] > second["cv_score"]
    assert second["best"] == str(tmp_path / "best.joblib")
    assert sha256(tmp_path / "best.joblib") == sha256(tmp_path / "hard.joblib")
    assert [r["file"] for r in second["leaderboard"]] == ["easy.joblib", "hard.joblib"]


def test_a_worse_refit_into_the_same_file_keeps_the_better_head_in_best(caches, tmp_path):
    easy, _ = caches
    good = fit("svm", easy, tmp_path / "svm.joblib")
    worse = fit("svm", easy, tmp_path / "svm.joblib", pca=1)
    assert good["cv_score"] > worse["cv_score"]
    board = worse["leaderboard"]
    assert sha256(tmp_path / "best.joblib") == board[0]["sha256"] != board[1]["sha256"]
    assert sha256(tmp_path / "svm.joblib") == board[1]["sha256"]
    # svm.joblib no longer holds the first head: only best.joblib does, and it stays the best
    third = fit("logistic", easy, tmp_path / "logistic.joblib", pca=1)
    assert third["cv_score"] < good["cv_score"]
    assert sha256(tmp_path / "best.joblib") == board[0]["sha256"]


def test_out_best_joblib_is_saved_as_its_kind(caches, tmp_path):
    said = []
    summary = fit_one("logistic", FitOptions(features=caches[0], out=str(tmp_path / "best.joblib"),
                                             folds=3), said.append)
    assert summary["path"] == str(tmp_path / "logistic.joblib")
    assert any("kept by the leaderboard" in line for line in said)
    assert sorted(os.listdir(tmp_path)) == ["best.joblib", "easy.h5", "hard.h5",
                                            "leaderboard.json", "logistic.joblib"]


def test_a_kill_between_the_board_and_best_joblib_loses_no_row(caches, tmp_path, monkeypatch):
    easy, _ = caches
    fit("svm", easy, tmp_path / "svm.joblib", pca=1)

    def killed(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(leaderboard, "_replace_with", killed)
    with pytest.raises(KeyboardInterrupt):
        fit("logistic", easy, tmp_path / "logistic.joblib")
    monkeypatch.undo()
    assert [r["kind"] for r in rows(tmp_path)] == ["svm", "logistic"]
    assert sha256(tmp_path / "best.joblib") == sha256(tmp_path / "svm.joblib")   # stale
    fit("svm", easy, tmp_path / "worse.joblib", pca=1)   # the next record repairs it
    assert sha256(tmp_path / "best.joblib") == sha256(tmp_path / "logistic.joblib")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".") or n.endswith(".lock")]


def test_an_out_named_like_the_board_is_refused(caches, tmp_path):
    from features.errors import UserError

    with pytest.raises(UserError, match="leaderboard's file"):
        fit("logistic", caches[0], tmp_path / "leaderboard.json")
