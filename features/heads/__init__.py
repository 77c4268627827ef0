"""Classical heads on cached features: kinds, estimators, solvers, search, fit stage, head files."""
