"""The exclude list: images `extract` leaves out of a cache and `fit` leaves out of every split.

A text file, one image path a line, relative to the data folder as a cache stores them
(`daisy/123.jpg`; an absolute path inside the data folder is taken too). A line starting with
`#` is a comment, and so is what follows two spaces and `#` on a line (the audit writes why each
image is listed there); blank lines are skipped. `audit` writes one; edit
it freely before use.
"""

from __future__ import annotations

import os

from features.errors import UserError

# what an audit's exclude list can hold (audit --exclude-kinds)
EXCLUDE_KINDS = ("duplicates", "leaks", "labels", "outliers")


def read_exclude(path: str, data_dir: str = "") -> set[str]:
    """The relative paths listed in the exclude file at `path`."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"--exclude {path}: no such file (`python cli.py audit` writes one)")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--exclude {path} cannot be read as a text list of paths ({exc})")
    root = os.path.abspath(data_dir) if data_dir else ""
    out = set()
    for line in lines:
        entry = line.split("  #", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        if root and os.path.isabs(entry):
            entry = os.path.relpath(entry, root)
        out.add(entry.replace(os.sep, "/"))
    return out


def excluded_rows(listed: set[str], paths, source: str, say=print) -> list[int]:
    """Row numbers of `paths` that are `listed`; says how many listed paths are not among them,
    and refuses a non-empty list that names none of them (a list for another folder)."""
    rows = [i for i, p in enumerate(paths) if p in listed]
    missing = len(listed) - len(rows)
    if listed and not rows:
        raise UserError(f"--exclude {source}: none of its {len(listed)} paths is an image here "
                        "(paths are relative to the data folder, e.g. daisy/1.jpg); is it the "
                        "list of another folder?")
    if missing:
        say(f"notice: {missing} of the {len(listed)} paths in {source} are not images here "
            "(already gone?); the others are excluded")
    return rows


def format_exclude(entries) -> str:
    """The file's text for [(relative path, why)]."""
    lines = ["# images to leave out: pass this file to `fit --exclude` (or `extract --exclude`)",
             "# one path a line, relative to the data folder; '#' starts a comment line, and two",
             "# spaces then '#' end a path"]
    lines += [f"{path}  # {why}" if why else path for path, why in entries]
    return "\n".join(lines) + "\n"
