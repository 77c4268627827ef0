"""Image input: scanning a class-per-folder tree, and a deterministic tf.data decode pipeline.

Order is never shuffled and the last batch is kept, so features stay aligned with their paths.
Images TensorFlow cannot decode get a second chance through Pillow (e.g. 1-bit BMP); what neither
can read is reported as skipped, with the reason, and never stops a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from bottleneck.data.augment import augmented_views
from features.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
NOT_AN_IMAGE = "cannot decode: not an image (no known image format: JPEG, PNG, BMP, GIF, WebP)"
SPLIT_DIRS = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


@dataclass
class ImageFolder:
    """The images of a data folder in a fixed, sorted order, with their labels."""

    root: str
    paths: list[str]            # relative to root, '/'-separated
    labels: np.ndarray          # int32 index into class_names
    class_names: list[str]
    split: np.ndarray | None    # codes when the tree is already split into train/val/test
    n_ignored: int              # files that are not images by their extension
    rejected: list = field(default_factory=list)   # (path, reason) of images no stage can open

    def absolute(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    @property
    def empty_classes(self) -> list[str]:
        """Class folders without a single image (they would silently have no examples)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return [name for name, count in zip(self.class_names, counts) if not count]


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclass
class WalkState:
    """What a walk remembers, bounded by folders and links, never by images: the real folders
    entered (each is listed once), the real targets of file links listed, and the files skipped
    as not images."""

    entered: set = field(default_factory=set)
    linked: set = field(default_factory=set)
    ignored: int = 0


def iter_images(folder: str, state: WalkState | None = None, tree: str | None = None):
    """Yield the image files below `folder` (recursively, sorted), lazily, one folder at a time.

    Symbolic links are followed where they lead out of `tree` (the data folder; default `folder`):
    a class folder may live on another disk. A link back into the tree or up to an ancestor
    (`a/loop -> ..`) is not followed: those images are listed in their own place, or the walk
    would repeat the tree under another class. A file is listed once, however many links lead to
    it; `state` carries what was listed across calls (scan_folder's classes, predict's inputs).
    """
    state = WalkState() if state is None else state
    tree = os.path.realpath(tree or folder)
    for base, dirs, files in os.walk(folder, followlinks=True):
        real_base = os.path.realpath(base)
        if real_base in state.entered:   # reached twice (two links, or overlapping inputs)
            dirs[:] = []
            continue
        state.entered.add(real_base)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and _enter(os.path.join(base, d), tree, state.entered))
        for name in sorted(files):
            if not is_image_file(name):
                state.ignored += 1
            elif _first_visit(os.path.join(base, name), real_base, name, state):
                yield os.path.join(base, name)


def _first_visit(path: str, real_base: str, name: str, state: WalkState) -> bool:
    """Whether `path` is the one listing of its file: a plain file is, unless a link to it was
    listed first; a link is, unless its target is listed in its own (entered) folder."""
    if not os.path.islink(path):
        return os.path.join(real_base, name) not in state.linked
    real = os.path.realpath(path)
    if real in state.linked:
        return False
    target_dir, target = os.path.split(real)
    if target_dir in state.entered and is_image_file(target) and os.path.exists(real):
        return False   # listed (or about to be, same folder) under its own name
    state.linked.add(real)
    return True


def walk_images(folder: str, state: WalkState | None = None, tree: str | None = None):
    """Sorted image files below `folder` as a list (see iter_images), and how many other files
    this walk saw."""
    state = WalkState() if state is None else state
    before = state.ignored
    found = list(iter_images(folder, state, tree))
    return found, state.ignored - before


def readable_name(path: str) -> str | None:
    """Why a file name cannot travel through the cache (UTF-8 paths) and TensorFlow, or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8: rename the file"
    return None


def printable(path: str) -> str:
    """A path with undecodable bytes shown as \\xNN escapes (valid UTF-8, for reports)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _enter(path: str, tree: str, entered: set) -> bool:
    """Walk into `path`: not twice, and through a link only when it leads out of the tree."""
    real = os.path.realpath(path)
    if real in entered:
        return False
    if not os.path.islink(path):
        return True
    inside = os.path.commonpath([real, tree]) in (real, tree)   # within, or an ancestor
    return not inside


def class_folders(folder: str) -> list[str]:
    """The sub-folders of `folder` that are classes, sorted: dot-folders (the folder's split
    record in .bottleneck/, .ipynb_checkpoints, ...) are not."""
    return sorted(d for d in os.listdir(folder)
                  if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))


def scan_folder(root: str) -> ImageFolder:
    """List a class-per-folder tree, or a tree already split into train/ val/ test/ class folders."""
    if not os.path.isdir(root):
        raise UserError(f"--data {root!r} is not a folder; point it at a folder with one "
                        "sub-folder of images per class")
    root = os.path.abspath(root)
    top = class_folders(root)
    presplit = bool(top) and "train" in [d.lower() for d in top] and all(
        d.lower() in SPLIT_DIRS for d in top)
    groups = [(d, SPLIT_DIRS[d.lower()]) for d in top] if presplit else [("", None)]
    class_names = sorted({c for g, _ in groups for c in class_folders(os.path.join(root, g))})
    if not class_names:
        raise UserError(f"{root} has no class sub-folders; expected e.g. {root}/cats/*.jpg and "
                        f"{root}/dogs/*.jpg")
    paths, labels, split, ignored, state, rejected = [], [], [], 0, WalkState(), []
    for group, code in groups:
        for label, name in enumerate(class_names):
            folder = os.path.join(root, group, name)
            if not os.path.isdir(folder):
                continue
            files, skipped = walk_images(folder, state, tree=root)
            ignored += skipped
            for path in files:
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                reason = readable_name(rel)
                if reason:
                    rejected.append((printable(rel), reason))
                    continue
                paths.append(rel)
                labels.append(label)
                split.append(code)
    if not paths:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return ImageFolder(root, paths, np.asarray(labels, dtype=np.int32), class_names,
                       np.asarray(split, dtype=np.uint8) if presplit else None, ignored,
                       rejected)


def _decode(path):
    from features.tf import tf
    return _decode_contents(tf.io.read_file(path))


def _decode_contents(contents):
    """A uint8 (H, W, 3) image of encoded bytes (a string tensor): the first frame of a GIF."""
    from features.tf import tf
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _resize(image, image_size: int):
    from features.tf import tf
    return tf.image.resize(image, (image_size, image_size), method="bilinear")


def image_dataset(paths: list[str], indices, image_size: int, batch_size: int, views: int = 0,
                  seed: int = 0, prefetch: bool = True):
    """Batches of (plan index, float32 image in [0, 255][, views]) in input order; undecodable
    images are dropped from the stream, and their missing indices tell the caller which.
    `prefetch=False` leaves prefetching to a caller that concatenates several of these."""
    from features.tf import tf
    def load(i, p):
        image = _decode(p)
        if views:
            return i, _resize(image, image_size), augmented_views(image, i, seed, views,
                                                                  image_size)
        return i, _resize(image, image_size)

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(indices, dtype=np.int64),
                                             np.asarray(paths, dtype=object).astype(str)))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(batch_size, drop_remainder=False)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def decode_with_pillow(path: str):
    """(uint8 RGB array, None) via Pillow for formats TensorFlow refuses, or (None, reason)."""
    data, reason = read_image_file(path)
    return (None, reason) if data is None else decode_bytes_with_pillow(data)


def decode_bytes_with_pillow(data: bytes):
    """(uint8 RGB array, None) of an encoded image via Pillow, or (None, reason)."""
    import io

    from PIL import Image, UnidentifiedImageError

    if not data:
        return None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB")), None
    except UnidentifiedImageError:
        return None, NOT_AN_IMAGE
    except (OSError, ValueError, SyntaxError) as exc:
        return None, f"cannot decode: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def decode_bytes(data: bytes):
    """(uint8 (H, W, 3) image, None) of an encoded image, or (None, reason): TensorFlow's decoder
    first, then Pillow's for what TensorFlow refuses (some BMP bit depths)."""
    from features.tf import tf
    try:
        return _decode_contents(tf.constant(data)), None
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return decode_bytes_with_pillow(data)


def image_from_bytes(data: bytes, sizes=(224,)):
    """([float32 (S, S, 3) image in [0, 255] for each size S], None), or (None, reason): the one
    bytes -> model input step of predict, serve and the Ray engine (decoded once, resized to each
    size, bilinear, as extraction's pipeline does)."""
    image, reason = decode_bytes(data)
    if image is None:
        return None, reason
    return [_resize(image, size).numpy().astype(np.float32) for size in sizes], None


def read_image_file(path: str):
    """(the file's bytes, None), or (None, reason) for a name or file that cannot be read."""
    reason = readable_name(path)
    if reason:
        return None, reason
    try:
        with open(path, "rb") as handle:
            return handle.read(), None
    except FileNotFoundError:
        return None, "no such file"
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or type(exc).__name__}"


def image_from_file(path: str, sizes=(224,)):
    """image_from_bytes of a file's contents: ([image per size], None) or (None, reason)."""
    data, reason = read_image_file(path)
    return (None, reason) if data is None else image_from_bytes(data, sizes)


def load_views(path: str, views: int, image_size: int, seed: int = 0, index: int = 0):
    """(views, S, S, 3) seeded augmented views of one file (as `extract --views`), or None."""
    data, _ = read_image_file(path)
    decoded, _ = decode_bytes(data) if data is not None else (None, None)
    if decoded is None:
        return None
    return augmented_views(decoded, index, seed, views, image_size).numpy()


def load_batch(paths: list[str], image_size: int):
    """Decode and resize a small list of files (for predict): (images, ok indices, [(i, reason)])."""
    images, ok, bad = [], [], []
    for i, path in enumerate(paths):
        sized, reason = image_from_file(path, (image_size,))
        if sized is None:
            bad.append((i, reason))
        else:
            images.append(sized[0])
            ok.append(i)
    shape = (0, image_size, image_size, 3)
    return (np.stack(images) if images else np.zeros(shape, np.float32)), ok, bad


def _decode_any(path):
    """Decode in the graph, BMPs through Pillow (whose pixels equal TensorFlow's where both can)."""
    from features.tf import tf
    def pillow():
        def load(p):
            array, reason = decode_with_pillow(p.decode())
            if array is None:
                raise ValueError(reason)
            return array

        image = tf.numpy_function(load, [path], tf.uint8)
        image.set_shape([None, None, 3])
        return image

    is_bmp = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.bmp")
    return tf.cond(is_bmp, pillow, lambda: _decode(path))


def labelled_dataset(paths: list[str], labels, image_size: int, batch_size: int, *,
                     shuffle: bool = False, seed: int = 0, cache: bool = False):
    """Batches of (float32 image in [0, 255], int32 label) for training and scoring.

    The same decode+resize as extraction. With `shuffle` (the train split only) the order is
    reshuffled every epoch from `seed`; otherwise it is the input order. `cache` keeps decoded
    images in memory after the first pass (for small val/test sets scored every epoch).
    BMP files go through Pillow (TensorFlow refuses some bit depths that extraction kept via its
    Pillow fallback); undecodable images are dropped, as extraction dropped them.
    """
    from features.tf import tf
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths, dtype=object).astype(str),
                                             np.asarray(labels, dtype=np.int32)))
    if shuffle:
        ds = ds.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda p, y: (_resize(_decode_any(p), image_size), y),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    if cache:
        ds = ds.cache()
    return ds.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
