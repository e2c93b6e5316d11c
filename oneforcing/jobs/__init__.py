"""Registered jobs: what a recipe's `job:` can name."""

from oneforcing.jobs import (  # noqa: F401
    curvature, dist_check, eval, generate, ode_pairs, pipeline, plot, prepare_data, study, toy_data, toy_eval,
    toy_report, train,
)
