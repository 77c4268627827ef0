"""bottleneck: ImageNet-pretrained CNN features, cached once, for classifying your own images."""

__version__ = "0.1.0"
