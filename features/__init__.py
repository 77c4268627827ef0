"""The feature cache (HDF5) and the classical side that reads it."""
