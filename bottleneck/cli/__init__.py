"""The command-line interface: one module per command, each with `add_parser` and `run`.

`run(args, say)` does the work, calls `say(text)` for human output (silenced by --json) and
returns a JSON-able summary dict, which --json prints as one object. A command that streams its
own JSON (predict) returns None.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from features.errors import UserError

COMMANDS = ["demo", "run", "extract", "layers", "backbones", "info", "sweep", "advise", "fit-svm",
            "fit-logistic", "fit-mlp", "fit", "predict", "finetune", "export"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bottleneck",
        description="Transfer learning for your own image folders: cache features of a "
                    "pretrained CNN once (extract), fit classical heads on them (fit-*), and "
                    "fine-tune the best one end to end (finetune).")
    from bottleneck import __version__

    parser.add_argument("--version", action="version", version=f"bottleneck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        cmd = module.add_parser(sub)
        cmd.add_argument("--json", action="store_true",
                         help="print one JSON object (the run's summary) instead of human output")
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
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
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to resume where it stopped", file=sys.stderr)
        return 130
    if args.json and result is not None:
        print(json.dumps(result, default=str))
    return 0
