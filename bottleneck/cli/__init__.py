"""The command-line interface: one module per command (the fit-* family shares cli/fit.py).

Each command is a parser function and `run(args, say)`: `run` builds the stage's typed options
from the parsed flags (`options_from_args`), calls the stage function, and returns its JSON-able
summary, which --json prints as one object (a command that streams its own JSON, predict,
returns None). `say(text)` is human output, sent to stderr under --json.

Building the parser imports every command module, so they import only light things at module
level: `--help`, `info`, `backbones`, `fit-svm` and `fit-logistic` never import TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from features.errors import UserError

# command name -> (module in bottleneck.cli, its parser function, its run function)
COMMANDS = {
    "demo": ("demo", "add_parser", "run"),
    "run": ("run", "add_parser", "run"),
    "extract": ("extract", "add_parser", "run"),
    "layers": ("layers", "add_parser", "run"),
    "backbones": ("backbones", "add_parser", "run"),
    "info": ("info", "add_parser", "run"),
    "sweep": ("sweep", "add_parser", "run"),
    "advise": ("advise", "add_parser", "run"),
    "fit-svm": ("fit", "add_svm_parser", "run_svm"),
    "fit-logistic": ("fit", "add_logistic_parser", "run_logistic"),
    "fit-mlp": ("fit", "add_mlp_parser", "run_mlp"),
    "fit": ("fit", "add_parser", "run"),
    "fit-knn": ("fit", "add_knn_parser", "run_knn"),
    "ensemble": ("ensemble", "add_parser", "run"),
    "audit": ("audit", "add_parser", "run"),
    "similar": ("similar", "add_parser", "run"),
    "predict": ("predict", "add_parser", "run"),
    "finetune": ("finetune", "add_parser", "run"),
    "export": ("export", "add_parser", "run"),
    "serve": ("serve", "add_parser", "run"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from bottleneck import __version__

    parser = _Parser(
        prog="bottleneck",
        description="Transfer learning for your own image folders: cache features of a "
                    "pretrained CNN once (extract), fit classical heads on them (fit-*), and "
                    "fine-tune the best one end to end (finetune).")
    parser.add_argument("--version", action="version", version=f"bottleneck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, add, run) in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        cmd = getattr(module, add)(sub)
        cmd.add_argument("--json", action="store_true",
                         help="print one JSON object (the run's summary) instead of human output")
        cmd.set_defaults(_run=getattr(module, run))
    return parser


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to resume where it stopped", file=sys.stderr)
        return 130


def _main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    say = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    try:
        result = args._run(args, say)
    except UserError as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    if args.json and result is not None:
        print(json.dumps(result, default=str))
    return 0
