"""Image input: folder scanning, decoding pipelines, augmentation, generated test sets."""
