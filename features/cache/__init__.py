"""The feature cache: its HDF5 file, the journal that builds it, its split, growth, provenance."""
