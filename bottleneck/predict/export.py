"""Export a fine-tuned model: a TensorFlow SavedModel, and TFLite where the converter manages."""

from __future__ import annotations

import os
import time

from features.atomic import atomic_path, write_json
from features.errors import UserError


def export_model(path: str, out: str | None = None, tflite: bool = True, say=print) -> dict:
    """Write <out>/saved_model (model.export), <out>/model.tflite and <out>/labels.json."""
    from bottleneck.finetune.transplant import class_info, inference_model
    from features.tf import keras

    started = time.time()
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such model; train one with `python cli.py finetune`")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"cannot load {path} as a Keras model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    model = inference_model(model)
    try:
        class_names, _ = class_info(model)
    except ValueError:
        class_names = []
    out = out or (path[:-6] if path.endswith(".keras") else path) + "_export"
    os.makedirs(out, exist_ok=True)
    saved = os.path.join(out, "saved_model")
    model.export(saved, format="tf_saved_model", verbose=False)
    result = {"model": path, "saved_model": saved, "tflite": None, "tflite_error": None,
              "class_names": class_names, "image_size": int(model.inputs[0].shape[1])}
    write_json(os.path.join(out, "labels.json"),
               {"class_names": class_names, "image_size": result["image_size"],
                "input": "float32 RGB in [0, 255], (N, size, size, 3)"}, indent=1)
    say(f"SavedModel -> {saved} (serving signature 'serve': float32 images 0..255 -> "
        f"probabilities over {len(class_names)} classes)")
    if tflite:
        from features.tf import tf
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            data = converter.convert()
            target = os.path.join(out, "model.tflite")
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                handle.write(data)
            result["tflite"] = target
            say(f"TFLite -> {target} ({len(data) / 2**20:.2f} MB)")
        except Exception as exc:  # the converter raises many kinds; report, don't fail
            msg = str(exc).strip().splitlines()
            result["tflite_error"] = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
            say(f"TFLite conversion failed (SavedModel is fine): {result['tflite_error']}")
    result["seconds"] = round(time.time() - started, 2)
    return result
