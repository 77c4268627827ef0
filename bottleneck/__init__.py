"""bottleneck: ImageNet-pretrained CNN features, cached once, for classifying your own images."""

import warnings

__version__ = "0.1.0"

# pandas (imported by scikit-learn when installed, e.g. with the `ray` extra) looks for its
# optional accelerator under the import name `bottleneck`, finds this package, rejects its
# version and warns on every run; it then does without the accelerator, which is what we want.
warnings.filterwarnings("ignore", message=r"Pandas requires version .* of 'bottleneck'")
