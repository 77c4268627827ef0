"""`fit-mlp`: see bottleneck/commands/fit.py."""

from .fit import add_mlp_parser as add_parser, run_mlp as run  # noqa: F401
