"""Exploration before committing to a route: `sweep` (which layer) and `advise` (which route)."""
