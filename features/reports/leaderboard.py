"""The leaderboard beside head files: every head fitted there, and `best.joblib`, the best of them.

`leaderboard.json` sits in the folder of the head files and lists one `Row` per fitted head (kind,
CV mean/std, test accuracy, file, its sha256, time, cache path and the cache's data identity).
`best.joblib` in the same folder holds the best-CV head among the rows of the cache of the latest
fit: a head fitted on another cache never becomes best for this one. A row's head is available
while its file still has the recorded sha256, or while best.joblib holds it (a later fit may have
replaced the file itself).

Writes follow the project's writers: one writer at a time (a lock file beside the board, removed
at the end), the board written atomically before best.joblib is replaced atomically, so a kill at
any moment loses no row and the next record repairs best.joblib.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

from features.atomic import atomic_path, check_writable, write_json
from features.errors import UserError

BOARD = "leaderboard.json"
BEST = "best.joblib"
FORMAT = "bottleneck-leaderboard"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Row:
    """One fitted head on the board."""

    kind: str
    cv_mean: float
    cv_std: float
    test_accuracy: float | None   # None: not scored on test (fit's extra transplantable head)
    file: str                     # the head file's name, in the board's folder
    sha256: str                   # of that file as saved: tells whether it still holds this head
    time: str                     # when it was recorded (UTC, ISO 8601)
    cache: str                    # absolute path of the cache it was fitted on
    data_id: str                  # the cache's data identity (images, labels, split)
    fit_seconds: float
    transplantable: bool          # finetune can put it on the network

    def same_cache(self, cache: str, data_id: str) -> bool:
        return self.cache == os.path.abspath(cache) and self.data_id == data_id


@dataclass
class Board:
    """A board's rows and what best.joblib holds (the row, None when it holds no listed head)."""

    folder: str
    rows: list[Row]
    best: Row | None

    @property
    def best_path(self) -> str:
        return os.path.join(self.folder, BEST)

    def to_json(self) -> dict:
        """What `--json` of a fit reports: `best` (the path of best.joblib) and `leaderboard`."""
        return {"best": self.best_path if self.best else None,
                "leaderboard": [asdict(r) for r in self.rows]}


def board_path(head_path: str) -> str:
    """The leaderboard that lists `head_path` (beside it)."""
    return os.path.join(os.path.dirname(os.path.abspath(head_path)), BOARD)


def is_best_file(path: str) -> bool:
    """Whether `path` is a leaderboard's best.joblib."""
    return os.path.basename(path) == BEST and os.path.isfile(board_path(path))


def head_file(out: str, kind: str, say) -> str:
    """Where a head asked for at `out` is saved: best.joblib is the leaderboard's, so a head
    asked for there is saved as <kind>.joblib beside it."""
    if os.path.basename(out) != BEST:
        return out
    path = os.path.join(os.path.dirname(out), f"{kind}.joblib")
    say(f"{out} is kept by the leaderboard (the best head so far); this head is saved as {path}")
    return path


def check_outputs(out: str) -> None:
    """Refuse, before any fitting, an --out that is the board itself or whose board or
    best.joblib cannot be written."""
    if os.path.basename(out) == BOARD:
        raise UserError(f"--out {out} is the leaderboard's file; give the head another name")
    check_writable(board_path(out), "--out")
    check_writable(os.path.join(os.path.dirname(board_path(out)), BEST), "--out")


def new_row(head_path: str, kind: str, *, cv_mean: float, cv_std: float, test_accuracy,
            fit_seconds: float, cache: str, data_id: str, transplantable: bool) -> Row:
    """The row of the head just saved at `head_path`."""
    return Row(kind=kind, cv_mean=float(cv_mean), cv_std=float(cv_std),
               test_accuracy=None if test_accuracy is None else float(test_accuracy),
               file=os.path.basename(head_path), sha256=_sha256(head_path),
               time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               cache=os.path.abspath(cache), data_id=data_id, fit_seconds=float(fit_seconds),
               transplantable=bool(transplantable))


def record_head(head_path: str, kind: str, *, cv_mean: float, cv_std: float, test_accuracy,
                fit_seconds: float, provenance) -> Board:
    """Record the head just saved at `head_path`, fitted on the cache `provenance` describes."""
    from features.heads.kinds import NOT_TRANSPLANTABLE

    return record(head_path, new_row(
        head_path, kind, cv_mean=cv_mean, cv_std=cv_std, test_accuracy=test_accuracy,
        fit_seconds=fit_seconds, cache=provenance.cache_path, data_id=provenance.data_id,
        transplantable=kind not in NOT_TRANSPLANTABLE))


def load_board(head_path: str) -> Board:
    """The board beside `head_path`, with the row best.joblib holds (None if it holds none)."""
    folder = os.path.dirname(os.path.abspath(head_path))
    rows = load(os.path.join(folder, BOARD))
    held = _sha256(os.path.join(folder, BEST))
    return Board(folder, rows, next((r for r in reversed(rows) if r.sha256 == held), None))


def say_board(board: Board, say, *, table: bool = False) -> None:
    """One line on best.joblib; with `table`, first the rows of its cache ranked by CV."""
    if board.best is None:
        return
    mine = sorted((r for r in board.rows if r.same_cache(board.best.cache, board.best.data_id)),
                  key=lambda r: -r.cv_mean)
    if table:
        say(f"leaderboard of this cache ({os.path.join(board.folder, BOARD)}; * = best.joblib):")
        say(f"    {'head':<10} {'cv mean':>8} {'cv std':>7} {'test':>7}  {'file':<28} time")
        for r in mine:
            test = "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
            say(f"  {'*' if r is board.best else ' '} {r.kind:<10} {r.cv_mean:>8.4f} "
                f"{r.cv_std:>7.4f} {test:>7}  {r.file:<28} {r.time}")
    say(f"best so far on this cache ({len(mine)} head(s) on the leaderboard): {board.best.kind} "
        f"from {board.best.file}, cv {board.best.cv_mean:.4f} -> {board.best_path}")


def load(path: str) -> list[Row]:
    """The rows of the board at `path` ([] when there is none)."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as handle:
            data = json.load(handle)
        if data.get("format") != FORMAT:
            raise ValueError("not a bottleneck leaderboard")
        names = {f.name for f in fields(Row)}
        return [Row(**{k: v for k, v in row.items() if k in names}) for row in data["rows"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path} is not a readable leaderboard ({exc}); move it aside and fit "
                        "again") from exc


def record(head_path: str, row: Row) -> Board:
    """Add `row` (the head saved at `head_path`) to its board, then make best.joblib the best
    head of that row's cache."""
    folder = os.path.dirname(os.path.abspath(head_path))
    path = os.path.join(folder, BOARD)
    with _lock(path):
        rows = load(path) + [row]
        write_json(path, {"format": FORMAT, "format_version": FORMAT_VERSION,
                          "rows": [asdict(r) for r in rows]}, indent=1)
        return Board(folder, rows, _update_best(folder, rows, row.cache, row.data_id))


def best(folder: str, rows: list[Row], cache: str, data_id: str, *,
         transplantable: bool = False) -> Row | None:
    """The best-CV available row of that cache (the earliest among equals); only heads finetune
    can transplant with `transplantable`."""
    held = _sha256(os.path.join(folder, BEST))
    ranked = sorted((i for i, r in enumerate(rows) if r.same_cache(cache, data_id)
                     and (r.transplantable or not transplantable)),
                    key=lambda i: (-rows[i].cv_mean, i))
    return next((rows[i] for i in ranked if rows[i].sha256 == held
                 or rows[i].sha256 == _sha256(os.path.join(folder, rows[i].file))), None)


def best_transplantable(best_file: str, cache: str, data_id: str) -> tuple[Row, str] | None:
    """(row, path) of the best head finetune can transplant on best_file's board, for that cache."""
    folder = os.path.dirname(os.path.abspath(best_file))
    row = best(folder, load(os.path.join(folder, BOARD)), cache, data_id, transplantable=True)
    return None if row is None else (row, os.path.join(folder, row.file))


def _update_best(folder: str, rows: list[Row], cache: str, data_id: str) -> Row | None:
    """Make best.joblib hold the best row of the cache; returns that row."""
    winner = best(folder, rows, cache, data_id)
    target = os.path.join(folder, BEST)
    if winner is not None and _sha256(target) != winner.sha256:
        _replace_with(os.path.join(folder, winner.file), target)
    return winner


def _replace_with(source: str, target: str) -> None:
    """`target` becomes `source`'s content atomically: a hard link (heads are only ever replaced
    by rename, never rewritten in place, so the link keeps this head), else a copy."""
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _lock(board: str):
    """Hold the board's writer lock (`leaderboard.json.lock`, removed at the end): a second fit
    in the same folder waits here for a moment instead of losing a row."""
    path = board + ".lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)   # the holder removed it as we waited: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)
