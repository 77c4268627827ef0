"""What `finetune` is asked to do, checked when built (before any work), and where it writes.

Importing this module imports no TensorFlow: the command line reads its choices from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bottleneck.data.augment import AugmentOptions
from features.errors import UserError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "cosine-warmup", "one-cycle")
HEAD_INITS = ("head", "random")


@dataclass(frozen=True)
class FinetuneOptions:
    from_head: str | None = None
    features: str | None = None        # cache; default: the head's provenance cache_path
    head_init: str = "head"            # "head" (transplant) | "random" (classic route)
    data: str | None = None            # image root; default: the cache's data_dir
    weights: str | None = None         # local weights file, if not at the recorded path
    epochs: int = 10
    warmup_epochs: int | None = None   # default 0 with a transplanted head, 2 with a random one
    warmup_lr: float | None = None     # default 10 x lr
    unfreeze_from: str | None = None   # layer name or index in the body; default: the top block
    lr: float = 1e-4
    lr_schedule: str = "constant"      # constant | cosine | cosine-warmup | one-cycle (per epoch)
    lr_warmup_epochs: int = 1          # cosine-warmup: epochs of linear warm-up from lr/10
    block_lr_decay: float = 1.0        # lr x decay**k for the body stage k below the top one
    find_lr: bool = False              # the learning-rate finder on train: its curve, then stop
    from_cache: str | None = None      # a map cache (pool none) at the cut: train the top on it
    memory_budget: float | None = None  # GB of maps held in RAM (default half the available)
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    batch_size: int = 32
    augment: AugmentOptions | None = None
    class_weight: str | None = None    # None | "balanced"
    patience: int | None = None
    out: str = "finetuned.keras"
    report: str | None = None          # default: <out stem>_report/
    seed: int = 0
    resume: bool = False
    check_samples: int = 64
    time_budget: float | None = None   # seconds of training; stop after the epoch that passes it
    average_last: int = 0              # >0: the output is the mean weights of the last N epochs

    def __post_init__(self):
        for message in _problems(self):
            refuse(message)

    @property
    def warmup(self) -> int:
        """Epochs with the body frozen: the given number, else 0 for a transplanted head and 2
        for a random one, never more than --epochs."""
        given = self.warmup_epochs
        default = 0 if self.head_init == "head" else 2
        return min(max(0, default if given is None else given), self.epochs)

    @property
    def paths(self) -> "CheckpointPaths":
        return CheckpointPaths.for_out(self.out, self.report)


def choice_problem(flag: str, value, choices) -> str | None:
    """The message for a value outside `choices` (None when it is one of them)."""
    return None if value in choices else f"{flag} {value!r}: choose one of {', '.join(choices)}"


def smoothing_problem(smoothing: float) -> str | None:
    return None if 0 <= smoothing < 1 else f"--label-smoothing {smoothing} must be in [0, 1)"


def refuse(problem: str | None) -> None:
    """Raise the problem as a UserError; nothing when there is none."""
    if problem:
        raise UserError(problem)


def _problems(o: FinetuneOptions):
    """Every bad value, in flag order, with the value received and the fix (None: fine)."""
    if o.epochs < 1:
        yield f"--epochs {o.epochs}: must be at least 1"
    if o.head_init not in HEAD_INITS:
        yield f"--head-init {o.head_init!r}: choose head (transplant --from-head) or random"
    if o.batch_size < 1:
        yield f"--batch-size {o.batch_size}: must be at least 1"
    if not o.lr > 0:
        yield f"--lr {o.lr}: must be positive"
    if o.warmup_lr is not None and not o.warmup_lr > 0:
        yield f"--warmup-lr {o.warmup_lr}: must be positive (leave it out for 10 x --lr)"
    yield choice_problem("--lr-schedule", o.lr_schedule, SCHEDULES)
    yield smoothing_problem(o.label_smoothing)
    yield choice_problem("--optimizer", o.optimizer, OPTIMIZERS)
    if o.class_weight not in (None, "none", "balanced"):
        yield f"--class-weight {o.class_weight!r}: only 'balanced' is supported"
    if o.patience is not None and o.patience < 1:
        yield f"--patience {o.patience}: must be at least 1 (leave it out to turn it off)"
    if o.time_budget is not None and not o.time_budget > 0:
        yield f"--time-budget {o.time_budget}: must be a positive number of seconds"
    if o.average_last < 0 or o.average_last > o.epochs:
        yield f"--average-last {o.average_last}: pick 0 (off) to --epochs ({o.epochs})"
    if not 0 < o.block_lr_decay <= 1:
        yield f"--block-lr-decay {o.block_lr_decay}: must be in (0, 1] (1: one lr for all)"
    if o.lr_warmup_epochs < 0:
        yield f"--lr-warmup-epochs {o.lr_warmup_epochs}: must be 0 or more"
    if o.memory_budget is not None and not o.memory_budget > 0:
        yield f"--memory-budget {o.memory_budget}: must be a positive number of GB"
    if o.from_cache and o.head_init != "head":
        yield ("--from-cache trains the layers above the cached maps from a transplanted head: "
               "pass --from-head, not --head-init random")
    if o.from_cache and o.augment:
        yield ("--augment does not reach cached maps: with --from-cache the cache's views "
               "(extract --views K) are the augmentation; drop --augment")
    if o.from_cache and o.warmup_epochs:
        yield "--from-cache has no warm-up phase (the head is transplanted): drop --warmup-epochs"
    if o.check_samples < 0:
        yield f"--check-samples {o.check_samples}: must be 0 or more"


@dataclass(frozen=True)
class CheckpointPaths:
    """The files of one fine-tuning run, all derived from --out (and --report)."""

    best: str       # the saved model: best val epoch, or the weight average
    last: str       # the last epoch, with optimizer state, for --resume
    state: str      # epoch, best score, history, for --resume
    average: str    # the running weight sum of --average-last
    report: str     # folder of log.csv, curves and test metrics

    @classmethod
    def for_out(cls, out: str, report: str | None = None) -> "CheckpointPaths":
        stem = out[:-6] if out.endswith(".keras") else out
        best = out if out.endswith(".keras") else out + ".keras"
        return cls(best=best, last=stem + ".last.keras", state=stem + ".state.json",
                   average=stem + ".average.npz", report=report or (best[:-6] + "_report"))

    def make_folders(self) -> None:
        for path in (self.best, self.last, self.state, self.average):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        os.makedirs(self.report, exist_ok=True)
