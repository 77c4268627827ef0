"""Import TensorFlow and Keras without their C++ start-up chatter; import this module first.

TensorFlow's native logging starts before TF_CPP_MIN_LOG_LEVEL is read, so the import runs with
file descriptor 2 pointed at /dev/null; Python exceptions from the import still propagate.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _import_quietly():
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow

        tensorflow.config.list_physical_devices()  # runs the CUDA probe (and its log) now
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_quietly()
