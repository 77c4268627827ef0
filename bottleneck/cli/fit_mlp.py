"""`fit-mlp`: see bottleneck/cli/fit.py."""

from bottleneck.cli.fit import add_mlp_parser as add_parser  # noqa: F401
from bottleneck.cli.fit import run_mlp as run  # noqa: F401
