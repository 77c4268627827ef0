"""`fit-svm`: see bottleneck/cli/fit.py."""

from bottleneck.cli.fit import add_svm_parser as add_parser  # noqa: F401
from bottleneck.cli.fit import run_svm as run  # noqa: F401
