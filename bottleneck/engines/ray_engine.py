"""Placeholder until the Ray engine lands."""

from features.errors import UserError


def check_ray(opts) -> None:
    """Refuse --engine ray until it exists."""
    raise UserError("--engine ray is not available yet")
