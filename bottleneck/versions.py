"""Library versions recorded in every cache and head, so provenance is explicit."""


def library_versions() -> dict:
    import h5py
    import keras
    import numpy
    import sklearn
    import tensorflow

    from . import __version__

    return {"bottleneck": __version__, "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__, "h5py": h5py.__version__,
            "scikit-learn": sklearn.__version__}
