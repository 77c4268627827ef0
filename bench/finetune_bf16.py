"""bf16 against float32 for training the cache route's top: MobileNet 0.25 above
conv_pw_5_relu on random 28x28x64 maps, one epoch of 1,024 maps per dtype policy (float32,
mixed_bfloat16, float32 again).

    PYTHONPATH=. python bench/finetune_bf16.py
"""

from __future__ import annotations

import time

import numpy as np

from features.tf import keras


def epoch_seconds(policy: str) -> float:
    keras.config.set_dtype_policy(policy)
    body = keras.applications.MobileNet(include_top=False, weights=None,
                                        input_shape=(224, 224, 3), alpha=0.25)
    sub = keras.Model(body.get_layer("conv_pw_5_relu").output,
                      body.get_layer("conv_pw_13_relu").output)
    for layer in sub.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((28, 28, 64))
    x = keras.layers.GlobalAveragePooling2D()(sub(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax", dtype="float32")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    X, y = rng.random((1024, 28, 28, 64), dtype=np.float32), rng.integers(0, 5, 1024)
    model.fit(X[:128], y[:128], batch_size=32, verbose=0)   # trace and warm up
    started = time.time()
    model.fit(X, y, batch_size=32, verbose=0)
    return time.time() - started


if __name__ == "__main__":
    for policy in ("float32", "mixed_bfloat16", "float32"):
        seconds = epoch_seconds(policy)
        print(f"{policy}: train 1024 maps above conv_pw_5_relu: {seconds:.2f} s "
              f"({1024 / seconds:.0f} maps/s)", flush=True)
