"""`finetune`: transplant a fitted head onto the network and train end to end (stage 3)."""

from __future__ import annotations

from bottleneck.cli.common import options_from_args
from bottleneck.data.augment import FLIPS, AugmentOptions
from bottleneck.finetune.options import HEAD_INITS, OPTIMIZERS, SCHEDULES, FinetuneOptions


def add_parser(sub):
    p = sub.add_parser(
        "finetune", help="put a fitted head on the network and train it end to end",
        description="Rebuild the backbone from a head's provenance up to its tapped layer(s), with "
                    "the same pooling, put the head on top as Keras layers (scaling and PCA folded "
                    "into the first Dense), check on the cache's test images that the network "
                    "predicts what the head predicts, then fine-tune on the cache's train split "
                    "(val: checkpoint choice and early stopping; test: scored once at the end). "
                    "BatchNorm layers stay in inference mode; layers below --unfreeze-from stay "
                    "frozen.")
    _source_arguments(p.add_argument_group("model source"))
    _training_arguments(p.add_argument_group("training"))
    _augment_arguments(p.add_argument_group("augmentation (training only; off unless --augment)"))
    _output_arguments(p.add_argument_group("output"))
    return p


def _source_arguments(src):
    """Where the head, the cache, the images and the weights come from."""
    src.add_argument("--from-head", metavar="HEAD.joblib",
                     help="a head saved by fit/fit-* (linear SVM, logistic, SGD or MLP); "
                          "best.joblib holding a kernel SVM takes the best transplantable head "
                          "of its leaderboard")
    src.add_argument("--head-init", choices=HEAD_INITS, default="head",
                     help="head: transplant --from-head (default); random: the classic route, a "
                          "random Dense head trained with the body frozen for --warmup-epochs, "
                          "then unfrozen (needs --features)")
    src.add_argument("--features", metavar="FILE.h5",
                     help="the feature cache (split, paths, network); default: the head's cache")
    src.add_argument("--data", metavar="DIR",
                     help="image folder (default: the cache's data_dir)")
    src.add_argument("--weights", metavar="PATH",
                     help="local weights file, if not at the path recorded in the cache")
    src.add_argument("--from-cache", metavar="MAPS.h5",
                     help="the cache route: a cache of the body's whole map at the cut (`extract "
                          "--layer CUT --pool none [--views K] [--storage float16]`, same images, "
                          "backbone, weights and size as the head's); only the layers above CUT "
                          "and the head train, on the maps, the K views as augmentation; the "
                          "saved model is still the whole network. Size per image: H*W*C*4 bytes "
                          "(float32) or *2 (float16) per view, e.g. MobileNet 0.25 at 224 px: "
                          "conv_pw_5_relu 28x28x64 98 KB, conv_pw_11_relu 14x14x128 49 KB in "
                          "float16; `extract --plan` prints it for any layer")
    src.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                     help="with --from-cache: maps held in RAM up to this size, else streamed "
                          "from the file a block at a time (default half the available memory)")


def _training_arguments(tr):
    """The recipe: epochs, phases, learning rate, optimizer, loss, stopping, resume."""
    tr.add_argument("--epochs", type=int, default=10, help="total epochs, warm-up included (10)")
    tr.add_argument("--warmup-epochs", type=int, default=None,
                    help="epochs with the body frozen (default 0 with a transplanted head, 2 with "
                         "--head-init random)")
    tr.add_argument("--warmup-lr", type=float, default=None,
                    help="learning rate of the warm-up epochs (default 10 x --lr)")
    tr.add_argument("--unfreeze-from", metavar="LAYER",
                    help="first trainable body layer, by name or index (default: the first "
                         "weighted layer of the top stage, as advise names it, e.g. conv_dw_12 "
                         "for mobilenet)")
    tr.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    tr.add_argument("--lr-schedule", choices=SCHEDULES, default="constant",
                    help="constant (default); cosine: --lr decays along half a cosine to "
                         "--lr/100 over the fine-tune epochs; cosine-warmup: --lr-warmup-epochs "
                         "rising from --lr/10 first; one-cycle: up from --lr/25 over 30 %% of the "
                         "epochs, then a cosine down to --lr/1e4 (all set per epoch)")
    tr.add_argument("--lr-warmup-epochs", type=int, default=1, metavar="N",
                    help="warm-up epochs of --lr-schedule cosine-warmup (default 1)")
    tr.add_argument("--block-lr-decay", type=float, default=1.0, metavar="D",
                    help="discriminative learning rates: the head and the top stage of the body "
                         "train at --lr, each stage below at D times the one above (default 1: "
                         "one rate)")
    tr.add_argument("--find-lr", action="store_true",
                    help="run the learning-rate finder on the train split (lr from 1e-7 up, "
                         "until the loss diverges), write lr_find.png/json into the report with "
                         "a suggested --lr, and stop without training")
    tr.add_argument("--label-smoothing", type=float, default=0.0, metavar="S",
                    help="train on targets of 1-S on the true class plus S/n_classes on each "
                         "(default 0: off; 0.1 is usual)")
    tr.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                    help="sgd (momentum 0.9, default) or adam")
    tr.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    tr.add_argument("--class-weight", choices=("balanced",), default=None,
                    help="weight the loss by inverse class frequency of the train split")
    tr.add_argument("--patience", type=int, default=None,
                    help="stop after this many epochs without a better val score (default: off)")
    tr.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="stop after the epoch in which training time passes SECONDS")
    tr.add_argument("--average-last", type=int, default=0, metavar="N",
                    help="save the mean of the weights of the last N epochs instead of the best "
                         "val epoch (BatchNorm is frozen, so the mean is a valid network; steadier "
                         "than a choice on a small val split; default 0: off)")
    tr.add_argument("--seed", type=int, default=0, help="seed of shuffling, augmentation, init")
    tr.add_argument("--resume", action="store_true",
                    help="continue from the last epoch checkpoint of --out (model, optimizer "
                         "state, epoch, best score)")
    tr.add_argument("--check-samples", type=int, default=64,
                    help="test images used by the transplant check (default 64)")


def _augment_arguments(au):
    """The training augmentation (bottleneck.data.augment.AugmentOptions)."""
    au.add_argument("--augment", action="store_true", help="turn augmentation on")
    au.add_argument("--flip", choices=FLIPS, default="horizontal", help="(default horizontal)")
    au.add_argument("--rotation", type=float, default=0.05,
                    help="max rotation, fraction of a turn (default 0.05 = 18 degrees)")
    au.add_argument("--shift", type=float, default=0.1, help="max shift, fraction (0.1)")
    au.add_argument("--zoom", type=float, default=0.1, help="max zoom in/out, fraction (0.1)")
    au.add_argument("--shear", type=float, default=0.0, help="max shear factor (default 0: off)")
    au.add_argument("--color-jitter", type=float, default=0.1,
                    help="brightness/contrast/saturation jitter factor (0.1; 0 turns it off)")


def _output_arguments(out):
    """The saved model, its resume files and the report folder."""
    out.add_argument("--out", default="finetuned.keras", metavar="MODEL.keras",
                     help="best checkpoint (default finetuned.keras); MODEL.last.keras and "
                          "MODEL.state.json hold the last epoch for --resume")
    out.add_argument("--report", metavar="DIR",
                     help="log.csv, training_curves.png, metrics.json, classification_report.txt, "
                          "confusion_matrix.png (default MODEL_report/)")


def run(args, say):
    from bottleneck.finetune.run import run_finetune

    augment = options_from_args(AugmentOptions, args) if args.augment else None
    return run_finetune(options_from_args(FinetuneOptions, args, augment=augment), say=say)
