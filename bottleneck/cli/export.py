"""`export`: a fine-tuned model as a TensorFlow SavedModel, and TFLite where it converts."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "export", help="write a fine-tuned MODEL.keras as a SavedModel (and TFLite)",
        description="Load a model saved by `finetune` and write <out>/saved_model (serving "
                    "signature: float32 RGB images in [0, 255] -> class probabilities), "
                    "<out>/model.tflite where the TFLite converter manages, and <out>/labels.json.")
    p.add_argument("model", metavar="MODEL.keras", help="a model written by `finetune`")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: MODEL_export/ next to the model)")
    p.add_argument("--no-tflite", action="store_true", help="skip the TFLite conversion")
    return p


def run(args, say):
    from bottleneck.predict.export import export_model

    return export_model(args.model, args.out, tflite=not args.no_tflite, say=say)
