"""`backbones`: the registry as a table."""

from __future__ import annotations

from bottleneck.backbones.registry import BACKBONES


def add_parser(sub):
    return sub.add_parser("backbones", help="list the supported backbones and their defaults",
                          description="List every supported keras.applications backbone with its "
                                      "preprocessing, default size, default tap and widths.")


def run(args, say):
    rows = []
    for row in BACKBONES.values():
        rows.append({"name": row.name, "constructor": row.constructor,
                     "preprocess": row.preprocess, "default_size": row.default_size,
                     "default_layer": row.default_layer or "(body output)",
                     "alphas": list(row.alphas)})
        alphas = ",".join(f"{a:g}" for a in row.alphas) or "-"
        say(f"{row.name:<18} {row.preprocess:<20} {row.default_size:>4}px  "
            f"{row.default_layer or '(body output)':<22} alpha: {alphas}")
    return {"backbones": rows}
