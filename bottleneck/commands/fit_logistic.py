"""`fit-logistic`: see bottleneck/commands/fit.py."""

from .fit import add_logistic_parser as add_parser, run_logistic as run  # noqa: F401
