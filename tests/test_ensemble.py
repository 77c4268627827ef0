"""ensemble: heads of several caches of the same images, combined on train out-of-fold rows.

Tiny generated caches (no network) for the combination; one tiny extraction (MobileNet 0.25,
seeded random weights, two sizes) for predict's agreement with the ensemble on cached features.
"""

import json
import os

import numpy as np
import pytest

from bottleneck.cli import main
from features.cache.split import SPLIT_NAMES, assign_split
from features.cache.store import Cache
from features.ensembles.combination import (
    choose_weights,
    load_ensemble,
    log_loss,
    row_differences,
    weighted_mean,
)
from features.ensembles.run import EnsembleOptions, run_ensemble
from features.errors import UserError
from features.heads.run import FitOptions, fit_one
from tests.helpers import write_synthetic_cache

NAMES = ["a", "b", "c"]
N_PER_CLASS = 30


def _quiet(*a, **k):
    pass


def _data(seed=0):
    """Labels, split and two feature sets: a good member (A) and a weak one (B, heavy noise)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), N_PER_CLASS)
    split = assign_split(y, test_size=0.25, val_size=0.15, seed=0)
    centres = rng.normal(size=(3, 8)) * 2.0
    good = centres[y] + rng.normal(size=(len(y), 8)) * 1.5
    weak = centres[y] + rng.normal(size=(len(y), 8)) * 6.0
    return y, split, centres, good, weak


def _head(tmp, name, features, y, split, **kw):
    cache = write_synthetic_cache(tmp / f"{name}.h5", {"f": features}, y, kw.pop("names", NAMES),
                                  split=split, **kw)
    head = str(tmp / f"{name}.joblib")
    fit_one("logistic", FitOptions(features=cache, out=head, folds=3, n_jobs=1), say=_quiet)
    return head


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Heads A (good), B (weak), and B' (B's train/val rows; test rows perfectly separable)."""
    tmp = tmp_path_factory.mktemp("ens")
    y, split, centres, good, weak = _data()
    test = split == SPLIT_NAMES.index("test")
    cheat = weak.copy()
    cheat[test] = centres[y[test]] * 5.0     # perfect on test, and only there
    return {"tmp": tmp, "y": y, "split": split,
            "A": _head(tmp, "A", good, y, split), "B": _head(tmp, "B", weak, y, split),
            "B2": _head(tmp, "B2", cheat, y, split)}


def _ensemble(made, *heads, **kw):
    out = str(made["tmp"] / f"ens_{'_'.join(os.path.basename(h)[:-7] for h in heads)}.joblib")
    return run_ensemble(EnsembleOptions(heads=list(heads), out=out, folds=3, **kw), say=_quiet)


def test_weights_never_see_test_rows(made):
    plain = _ensemble(made, made["A"], made["B"])
    cheat = _ensemble(made, made["A"], made["B2"])
    # B' is perfect on test, yet it gets exactly B's weight: the test rows chose nothing
    assert cheat["members"][1]["test_accuracy"] == 1.0
    assert plain["members"][1]["test_accuracy"] < 1.0
    np.testing.assert_allclose(cheat["weights"], plain["weights"], atol=1e-12)
    assert cheat["weights"][0] > cheat["weights"][1]
    assert cheat["oof_accuracy"] == plain["oof_accuracy"]
    assert plain["chosen_on"] == "train out-of-fold"
    assert sum(plain["weights"]) == pytest.approx(1.0)


def _member_test_probas(ens):
    """Each member's pipeline on its cache's test rows (path order of member 1's cache)."""
    probas, y = [], None
    for m in ens.members:
        with Cache(m.provenance.cache_path) as cache:
            rows = np.flatnonzero(cache.split_mask("test"))
            probas.append(m.pipeline.predict_proba(cache.features(m.provenance.feature_layers,
                                                                  rows)))
            y = cache.labels[rows]
    return probas, y


def test_proba_is_the_weighted_mean_of_members(made):
    summary = _ensemble(made, made["A"], made["B"])
    ens = load_ensemble(summary["path"])
    probas, y = _member_test_probas(ens)
    w = np.asarray(ens.weights)
    want = (w[0] * probas[0] + w[1] * probas[1]) / w.sum()
    np.testing.assert_allclose(ens.predict_proba(probas), want, atol=1e-12)
    assert summary["test_accuracy"] == pytest.approx(np.mean(want.argmax(1) == y))
    assert [m["test_accuracy"] for m in summary["members"]] == pytest.approx(
        [np.mean(p.argmax(1) == y) for p in probas])


def test_choose_weights_minimises_log_loss():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 200)
    w = choose_weights([good, noise], y)
    best = min(log_loss(weighted_mean([good, noise], [t, 1 - t]), y)
               for t in np.linspace(0, 1, 201))
    assert log_loss(weighted_mean([good, noise], w), y) <= best + 1e-9
    assert w[0] > 0.9


def test_stacked_head(made):
    summary = _ensemble(made, made["A"], made["B"], stack=True)
    ens = load_ensemble(summary["path"])
    assert ens.combine == "stack" and ens.stacker is not None
    probas, y = _member_test_probas(ens)
    assert summary["test_accuracy"] == pytest.approx(
        np.mean(ens.predict_proba(probas).argmax(1) == y))


def test_report_shows_members_beside_ensemble(made):
    report = made["tmp"] / "report"
    summary = _ensemble(made, made["A"], made["B"], report=str(report))
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["accuracy"] == summary["test_accuracy"]
    assert [m["test"]["accuracy"] for m in metrics["head"]["members"]] == [
        m["test_accuracy"] for m in summary["members"]]
    table = (report / "members.md").read_text()
    assert table.count("\n") == 2 + 2 + 1 and "ensemble" in table
    assert (report / "mistakes.html").is_file() and "top_mistakes" in metrics


def test_row_differences_names_them():
    ref = {"x.png": ("a", "train"), "y.png": ("b", "test"), "z.png": ("a", "val")}
    other = {"x.png": ("a", "test"), "y.png": ("a", "test"), "w.png": ("a", "val")}
    diffs = row_differences(ref, other)
    assert diffs == ["1 image(s) missing (e.g. z.png)", "1 extra image(s) (e.g. w.png)",
                     "1 image(s) in another label (e.g. y.png: a instead of b)",
                     "1 image(s) in another split (e.g. x.png: test instead of train)"]


def _refused(made, capsys, *heads):
    out = made["tmp"] / "refused.joblib"
    assert main(["ensemble", *heads, "--out", str(out), "--cv", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not out.exists()
    return err[0]


def test_mismatched_images_are_refused_before_work(made, capsys):
    y, split, _, good, _ = _data()
    paths = [f"img{i}.png" for i in range(len(y))]
    paths[5] = "renamed.png"
    other = _head(made["tmp"], "renamed", good, y, split, paths=paths)
    err = _refused(made, capsys, made["A"], other)
    assert "member 2" in err and "img5.png" in err and "renamed.png" in err


def test_mismatched_split_and_classes_are_refused(made, capsys):
    y, split, _, good, _ = _data()
    moved = split.copy()
    first_train = int(np.flatnonzero(split == 0)[0])
    moved[first_train] = SPLIT_NAMES.index("test")
    head = _head(made["tmp"], "moved", good, y, moved)
    err = _refused(made, capsys, made["A"], head)
    assert "split" in err and f"img{first_train}.png: test instead of train" in err
    renamed = _head(made["tmp"], "classes", good, y, split, names=["a", "b", "z"])
    assert "classes" in _refused(made, capsys, made["A"], renamed)
    assert "twice" in _refused(made, capsys, made["A"], made["A"])
    assert "at least two" in _refused(made, capsys, made["A"])


def test_old_heads_refuse_an_ensemble_file_clearly(made):
    from features.heads.headfile import load_head

    summary = _ensemble(made, made["A"], made["B"])
    load_head(made["A"])    # head files read as before
    with pytest.raises(UserError, match="ensemble"):
        load_head(summary["path"])


# ---- predict on images agrees with the ensemble on cached features

@pytest.fixture(scope="module")
def real(tiny_heads, tiny_folder, tiny_weights):
    made = tiny_heads
    return {"data": tiny_folder, "ensemble": made["ensemble"], "summary": made["summary"],
            "weights": tiny_weights}


def test_predict_agrees_with_ensemble_on_cached_features(real, capsys):
    ens = load_ensemble(real["ensemble"])
    probas = []
    for m in ens.members:
        with Cache(m.provenance.cache_path) as cache:
            probas.append(m.pipeline.predict_proba(cache.features(m.provenance.feature_layers)))
            paths = [os.path.join(real["data"], p) for p in cache.paths]
    want = ens.predict_proba(probas)
    from bottleneck.predict.predictor import load_predictor

    predictor = load_predictor(real["ensemble"])
    assert predictor.kind == "ensemble" and predictor.info["networks"] == 2
    assert predictor.image_sizes == (32, 48)
    assert main(["predict", real["data"], "--model", real["ensemble"], "--json",
                 "--top-k", "4"]) == 0
    got = {row["path"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sorted(got) == sorted(paths)
    for path, p in zip(paths, want):
        row = dict(got[path]["top_k"])
        assert [row[c] for c in ens.class_names] == pytest.approx(list(p), abs=1e-4)


def test_ensemble_json_names_members_weights_and_test_accuracy(real, tmp_path, capsys):
    heads = [m["path"] for m in real["summary"]["members"]]
    assert main(["ensemble", *heads, "--out", str(tmp_path / "e.joblib"), "--cv", "2",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [m["path"] for m in summary["members"]] == heads
    assert len(summary["weights"]) == 3 and "test_accuracy" in summary


def test_predict_tta_on_a_two_size_ensemble(real):
    from bottleneck.predict.predictor import load_predictor, predict_paths

    predictor = load_predictor(real["ensemble"])
    files = sorted(os.path.join(real["data"], c, f) for c in os.listdir(real["data"])
                   if not c.startswith(".")   # the folder's split record
                   for f in os.listdir(os.path.join(real["data"], c)))[:3]
    plain = [p for _, p, _ in predict_paths(predictor, files)]
    tta = [p for _, p, _ in predict_paths(predictor, files, tta=2, seed=0)]
    again = [p for _, p, _ in predict_paths(predictor, files, tta=2, seed=0)]
    np.testing.assert_allclose(np.sum(tta, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(tta, again)                 # seeded views
    assert not np.allclose(tta, plain)                     # the views count


def test_ensemble_command_never_imports_tensorflow(made):
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = str(made["tmp"] / "no_tf.joblib")
    code = ("import sys; from bottleneck.cli import main; "
            f"rc = main(['ensemble', {made['A']!r}, {made['B']!r}, '--out', {out!r}, '--cv', '3']);"
            "assert rc == 0 and 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
