"""Run a recipe: load it and build its job strictly (`jobs.base.prepare`), set up distributed
state, run, tear down."""

from __future__ import annotations

import logging
import os
import sys

from oneforcing.distributed import init_distributed, setup_logging, teardown_distributed
from oneforcing.errors import UserError, report
from oneforcing.jobs.base import RunContext, prepare

log = logging.getLogger("oneforcing")


def run(recipe_path: str | None, overrides: list[str], job_name: str | None = None) -> int:
    """Run on this process (one rank of many, or alone); returns the exit code."""
    rank = int(os.environ.get("RANK", "0") or 0)
    setup_logging(rank)
    try:
        recipe, meta, job = prepare(recipe_path, overrides, job_name)
    except UserError as err:
        return report(err)
    ctx = None
    try:
        ctx = init_distributed(meta.get("seed", RunContext.seed), recipe, recipe_path)
        job.run(ctx)
        return 0
    except UserError as err:
        if err.key and not err.file:  # a recipe key named at run time: say which recipe
            err = err.at(file=recipe_path or "(command line)")
        return report(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        teardown_distributed()
