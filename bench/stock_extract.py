"""The stock script `extract` is measured against: what a user writes with Keras and h5py alone.

    python bench/stock_extract.py --data DIR --weights W.h5 --out feats.h5 \
        [--backbone mobilenet --alpha 0.25 --layer conv_pw_13_relu --size 224 --batch-size 32]

`keras.utils.image_dataset_from_directory(shuffle=False)` + the family's `preprocess_input` +
`model.predict` over the frozen body cut at the layer and average-pooled; features, labels and
paths written with h5py. Nothing of this project is imported, so the whole process is the peer of
`python cli.py extract` (bench/extract.py --case process times both).
"""

from __future__ import annotations

import argparse

MODULES = {"mobilenet": ("MobileNet", "mobilenet"), "vgg16": ("VGG16", "vgg16"),
           "resnet50": ("ResNet50", "resnet")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--backbone", default="mobilenet", choices=sorted(MODULES))
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--layer", default="conv_pw_13_relu")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()

    import h5py
    import keras
    import numpy as np

    constructor, module = MODULES[args.backbone]
    kwargs = {"alpha": args.alpha} if args.backbone == "mobilenet" else {}
    body = getattr(keras.applications, constructor)(
        include_top=False, weights=None if args.weights == "none" else args.weights,
        input_shape=(args.size, args.size, 3), **kwargs)
    pooled = keras.layers.GlobalAveragePooling2D()(body.get_layer(args.layer).output)
    model = keras.Model(body.input, pooled)
    preprocess = getattr(keras.applications, module).preprocess_input
    ds = keras.utils.image_dataset_from_directory(
        args.data, shuffle=False, image_size=(args.size, args.size), batch_size=args.batch_size,
        verbose=False)
    import os

    # labels from the paths, not from a second pass that would decode every image again
    labels = np.asarray([ds.class_names.index(os.path.basename(os.path.dirname(path)))
                         for path in ds.file_paths], dtype=np.int32)
    features = model.predict(ds.map(lambda x, y: preprocess(x)), verbose=0)
    with h5py.File(args.out, "w") as f:
        f["features"] = features
        f["labels"] = labels
        f["paths"] = np.asarray(ds.file_paths, dtype="S")
    print(f"{len(features)} images -> {args.out} {features.shape}")


if __name__ == "__main__":
    main()
