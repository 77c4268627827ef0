"""`fit-logistic`: see bottleneck/cli/fit.py."""

from bottleneck.cli.fit import add_logistic_parser as add_parser  # noqa: F401
from bottleneck.cli.fit import run_logistic as run  # noqa: F401
