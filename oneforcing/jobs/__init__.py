"""Registered jobs: what a recipe's `job:` can name."""

from oneforcing.jobs import dist_check, generate, train  # noqa: F401
