"""Distributed engines for `extract` beyond one machine's devices (imported only when asked)."""
