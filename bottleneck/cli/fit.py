"""Stage 2 commands: `fit-svm`, `fit-logistic`, `fit-mlp` and `fit` (all heads, best by CV).

The logic lives in features/heads/run.py and features/heads/kinds.py (imported when a command
runs, so `--help` stays light); these are the argument parsers.
"""

from __future__ import annotations

import argparse

from bottleneck.cli.common import add_cache_args, options_from_args
from features.errors import UserError
from features.heads.kinds import DEFAULT_FIT_KINDS, KINDS, ROUTES, SCALINGS


def _common(p, out_default: str, scaling: str = "standard"):
    add_cache_args(p, "cached layer to use; 'all' (or NAME,NAME) concatenates layers (default: "
                      "the only layer, or all of them when the cache holds several)")
    p.add_argument("--out", default=None, metavar="HEAD.joblib",
                   help=f"where to save the head (default {out_default}); leaderboard.json and "
                        "best.joblib, the best head fitted there on this cache by CV score, are "
                        "kept beside it")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write metrics.json, classification_report.txt and confusion_matrix.png")
    p.add_argument("--seed", type=int, default=0, help="seed of CV folds and training (default 0)")
    p.add_argument("--n-jobs", type=int, default=-1,
                   help="cores to use: CV folds run in parallel, one core each (-1 = all, the "
                        "default; 1 = one core)")
    p.add_argument("--class-weight", choices=("balanced", "none"), default="none",
                   help="weight classes inversely to their frequency (default none)")
    p.add_argument("--cv", type=int, default=5, dest="folds", metavar="K",
                   help="stratified folds on the train split for choosing hyper-parameters "
                        "(default 5)")
    p.add_argument("--scaling", choices=SCALINGS, default=scaling,
                   help=f"feature scaling before the classifier (default {scaling})")
    p.add_argument("--pca", default="none", metavar="N|FRACTION",
                   help="whitened PCA to N components or a variance fraction (default none)")
    p.add_argument("--route", choices=ROUTES, default="auto",
                   help="in-memory fit, or stream HDF5 chunks through SGD partial_fit; auto picks "
                        "by --max-memory-mb (default auto)")
    p.add_argument("--max-memory-mb", type=float, default=None, metavar="MB",
                   help="memory budget for the in-memory route (default: a quarter of RAM)")
    p.add_argument("--refit-on", choices=("train+val", "train"), default="train+val",
                   help="rows of the final refit of SVM/logistic heads after CV (default "
                        "train+val; the MLP always uses val for early stopping)")
    p.add_argument("--top-k", type=int, default=3, help="k of the top-k accuracy (default 3)")
    p.add_argument("--no-views", action="store_true",
                   help="ignore the cache's augmented views (extract --views K); by default heads "
                        "train on every view of the training images, with grouped CV folds")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="leave out the images listed in FILE (one path a line, relative to the "
                        "data folder; `audit` writes one) from every split")
    p.add_argument("--tta", action="store_true",
                   help="score test images on the mean probability over their plain and "
                        "augmented views (needs a cache made with --views K)")
    return p


def _mlp_args(p):
    """The MLP's flags; unset ones take features/heads/mlp.py's MLPSettings defaults."""
    p.add_argument("--hidden", type=int, default=None, help="MLP hidden units (default 256)")
    p.add_argument("--l2", type=float, default=None,
                   help="MLP L2 penalty: + L2 x sum of squared kernel weights on the mean batch "
                        "loss (default 1e-4)")
    p.add_argument("--dropout", type=float, default=None, help=argparse.SUPPRESS)   # refused
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum MLP epochs; early stopping on the val split (default 200)")
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without a better val loss before the MLP stops (default 3)")


def _check_mlp_args(args) -> None:
    """The MLP's flags, refused before any work when they cannot train (a patience below 1 stops
    at the first epoch); --dropout is gone with the numpy trainer (MLPClassifier has none)."""
    for name in ("hidden", "epochs", "patience"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name} {value}: give a whole number of at least 1")
    if getattr(args, "dropout", None) is not None:
        raise UserError(f"--dropout {args.dropout:g}: the MLP head trains with scikit-learn's "
                        "MLPClassifier, which has no dropout; regularise it with --l2 "
                        "(default 1e-4), or drop the flag")
    l2 = getattr(args, "l2", None)
    if l2 is not None and not l2 >= 0:
        raise UserError(f"--l2 {l2}: give a penalty of at least 0, e.g. 1e-4")


def options(args):
    """FitOptions from the parsed flags (the MLP's own flags go into its dict)."""
    from features.heads.run import FitOptions, parse_pca

    if args.folds < 2:
        raise UserError("--cv must be at least 2")
    _check_mlp_args(args)
    mlp = {key: getattr(args, name) for name, key in (
        ("hidden", "hidden"), ("l2", "l2"), ("epochs", "max_epochs"),
        ("patience", "patience")) if getattr(args, name, None) is not None}
    return options_from_args(
        FitOptions, args, class_weight=None if args.class_weight == "none" else args.class_weight,
        pca=parse_pca(args.pca), mlp=mlp, views=not args.no_views)


# ---- fit-svm
def add_svm_parser(sub):
    p = sub.add_parser("fit-svm", help="fit a linear (or kernel) SVM head on a feature cache",
                       description="Fit a StandardScaler -> [PCA] -> SVM pipeline on cached "
                                   "features; C is chosen by stratified k-fold CV on the train "
                                   "split; the test split is scored once. Probabilities of the "
                                   "linear SVM are softmax(temperature x decision function).")
    p.add_argument("--kernel", choices=("linear", "rbf", "poly"), default="linear",
                   help="linear (default; transplantable onto the network) or a kernel SVM")
    return _common(p, "svm.joblib")


def run_svm(args, say):
    from features.heads.run import fit_one

    kind = "svm" if args.kernel == "linear" else f"svm-{args.kernel}"
    return fit_one(kind, options(args), say)


# ---- fit-logistic
def add_logistic_parser(sub):
    p = sub.add_parser("fit-logistic", help="fit a multinomial logistic-regression head",
                       description="Fit a StandardScaler -> [PCA] -> multinomial "
                                   "LogisticRegression pipeline; C chosen by stratified k-fold CV "
                                   "on the train split; the test split is scored once.")
    return _common(p, "logistic.joblib")


def run_logistic(args, say):
    from features.heads.run import fit_one

    return fit_one("logistic", options(args), say)


# ---- fit-mlp
def add_mlp_parser(sub):
    p = sub.add_parser("fit-mlp", help="fit a small dense head (Dense-ReLU-softmax)",
                       description="Train Dense(256, relu) -> softmax on the cached features with "
                                   "scikit-learn's MLPClassifier (Adam, L2), early stopping on "
                                   "the cache's val split; scored by k-fold CV on train and once "
                                   "on test. The weights are stored as numpy arrays "
                                   "(transplantable by finetune).")
    _mlp_args(p)
    return _common(p, "mlp.joblib")


def run_mlp(args, say):
    from features.heads.run import fit_one

    return fit_one("mlp", options(args), say)


# ---- fit-knn
def add_knn_parser(sub):
    p = sub.add_parser("fit-knn", help="fit a cosine k-nearest-neighbours head (k chosen by CV)",
                       description="Fit a [scaling] -> [PCA] -> cosine kNN pipeline: the "
                                   "standard kNN probe beside the linear one. k is chosen among "
                                   "1, 3, 5, 10, 20, 40 by stratified k-fold CV on the train "
                                   "split (one neighbour search per fold for every k); the test "
                                   "split is scored once. Probabilities are the neighbours' vote "
                                   "shares. The head keeps its training rows, so it is not "
                                   "transplantable by finetune. Default scaling none: cosine on "
                                   "the features as cached (CV 0.863 against 0.851 standardised "
                                   "on flowers5).")
    return _common(p, "knn.joblib", scaling="none")


def run_knn(args, say):
    from features.heads.run import fit_one

    return fit_one("knn", options(args), say)


# ---- fit
def add_parser(sub):
    p = sub.add_parser("fit", help="fit every head, keep the best by cross-validated score",
                       description="Fit each head kind (--heads), rank them by stratified k-fold "
                                   "CV accuracy on the train split, save the best and score only "
                                   "it on the test split. Prints the ranked table and the "
                                   "leaderboard of the cache.")
    p.add_argument("--heads", default=",".join(DEFAULT_FIT_KINDS),
                   help=f"comma-separated kinds among {', '.join(KINDS)} "
                        f"(default {','.join(DEFAULT_FIT_KINDS)})")
    _mlp_args(p)
    return _common(p, "the winner's <kind>.joblib")


def run(args, say):
    kinds = [k.strip() for k in args.heads.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UserError(f"--heads {args.heads!r}: choose among {', '.join(KINDS)}")
    from features.heads.run import fit_best

    return fit_best(options(args), kinds, say)
