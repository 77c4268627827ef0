"""Ensembles of heads: the combination and its file, and the `ensemble` stage that chooses it."""
