"""The whole route in one call (`run`, `demo`) and its report."""
