"""Registered jobs: what a recipe's `job:` can name."""

from oneforcing.jobs import dist_check, eval, generate, prepare_data, toy_data, train  # noqa: F401
