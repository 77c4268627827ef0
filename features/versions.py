"""Library versions recorded in every cache and head, so provenance is explicit."""


def library_versions() -> dict:
    import h5py
    import numpy
    import sklearn

    from bottleneck import __version__
    from features.tf import keras
    from features.tf import tf as tensorflow

    return {"bottleneck": __version__, "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__, "h5py": h5py.__version__,
            "scikit-learn": sklearn.__version__}
