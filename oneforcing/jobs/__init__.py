"""Registered jobs: what a recipe's `job:` can name. The toy world's jobs (toy_data, toy_eval,
eval, toy_report) are in oneforcing/toy/jobs/."""

from oneforcing.jobs import (  # noqa: F401
    curvature, dist_check, generate, ode_pairs, pipeline, plot, prepare_data, serve, study, train, vbench_export,
)
