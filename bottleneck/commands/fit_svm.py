"""`fit-svm`: see bottleneck/commands/fit.py."""

from .fit import add_svm_parser as add_parser, run_svm as run  # noqa: F401
