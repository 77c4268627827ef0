"""`ensemble`: combine heads fitted on different caches of the same images into one model.

The logic lives in features/ensembles/run.py (imported when the command runs, so `--help` stays
light); this is the argument parser.
"""

from __future__ import annotations

from bottleneck.cli.common import options_from_args


def add_parser(sub):
    p = sub.add_parser(
        "ensemble", help="combine heads of several caches (backbones, layers, sizes) into one",
        description="Combine heads fitted on caches of the same images (matched by relative path "
                    "and split): weights (or --stack, a stacked logistic head) chosen on the train "
                    "split's out-of-fold probabilities, the test split scored once for the "
                    "ensemble and every member. `predict --model ENSEMBLE.joblib` uses it. "
                    "joblib files run code when loaded: only use heads you trust.")
    p.add_argument("heads", nargs="+", metavar="HEAD.joblib", help="two or more head files")
    p.add_argument("--out", default="ensemble.joblib", metavar="ENSEMBLE.joblib",
                   help="where to save the ensemble (default ensemble.joblib)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write metrics.json (every member's test figures beside the ensemble's), "
                        "members.md, classification_report.txt, confusion_matrix.png and "
                        "mistakes.html")
    p.add_argument("--stack", action="store_true",
                   help="a stacked multinomial logistic head on the members' log-probabilities "
                        "instead of a weighted mean")
    p.add_argument("--cv", type=int, default=5, dest="folds", metavar="K",
                   help="folds of the out-of-fold probabilities on the train split (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    p.add_argument("--top-k", type=int, default=3, help="top-k accuracy to report (default 3)")
    return p


def run(args, say):
    from features.ensembles.run import EnsembleOptions, run_ensemble

    return run_ensemble(options_from_args(EnsembleOptions, args), say=say)
