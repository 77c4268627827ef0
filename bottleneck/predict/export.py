"""Export a fine-tuned model: a TensorFlow SavedModel, and TFLite where the converter manages."""

from __future__ import annotations

import os
import time

from features.atomic import atomic_path, write_json


def export_model(path: str, out: str | None = None, tflite: bool = True, say=print) -> dict:
    """Write <out>/saved_model (model.export), <out>/model.tflite and <out>/labels.json."""
    from bottleneck.finetune.model import load_network

    started = time.time()
    network = load_network(path)
    out = out or (path[:-6] if path.endswith(".keras") else path) + "_export"
    os.makedirs(out, exist_ok=True)
    saved = os.path.join(out, "saved_model")
    network.model.export(saved, format="tf_saved_model", verbose=False)
    result = {"model": path, "saved_model": saved, "tflite": None, "tflite_error": None,
              "class_names": network.class_names, "image_size": network.image_size}
    write_json(os.path.join(out, "labels.json"),
               {"class_names": network.class_names, "image_size": network.image_size,
                "input": "float32 RGB in [0, 255], (N, size, size, 3)"}, indent=1)
    say(f"SavedModel -> {saved} (serving signature 'serve': float32 images 0..255 -> "
        f"probabilities over {len(network.class_names)} classes)")
    if tflite:
        result.update(_write_tflite(saved, os.path.join(out, "model.tflite"), say))
    result["seconds"] = round(time.time() - started, 2)
    return result


def _write_tflite(saved: str, target: str, say) -> dict:
    """{'tflite': path} when the converter manages, else {'tflite_error': one line}: the
    converter raises many kinds of errors, and the SavedModel is fine either way."""
    from features.tf import tf

    try:
        data = tf.lite.TFLiteConverter.from_saved_model(saved).convert()
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
    except Exception as exc:  # report, don't fail
        msg = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]
        say(f"TFLite conversion failed (SavedModel is fine): {error}")
        return {"tflite": None, "tflite_error": error}
    say(f"TFLite -> {target} ({len(data) / 2**20:.2f} MB)")
    return {"tflite": target, "tflite_error": None}
