"""Run a recipe: load it, build its job strictly, set up distributed state, run, tear down."""

from __future__ import annotations

import logging
import os
import sys

from oneforcing.config import load_recipe
from oneforcing.errors import RecipeError, UserError, report
from oneforcing.registry import JOBS, build, import_modules, load_plugins
from oneforcing.runtime import check_seed

log = logging.getLogger("oneforcing")

# Top-level recipe keys that belong to the runner; every other key goes to the job.
META_KEYS = ("job", "seed", "imports", "description")


def split_recipe(recipe: dict, file: str | None) -> tuple[dict, dict]:
    """(meta, job_config) with the meta keys validated."""
    meta = {k: recipe[k] for k in META_KEYS if k in recipe}
    job = meta.get("job")
    if job is None:
        raise RecipeError(f"missing 'job' (one of: {', '.join(JOBS.names())})", file=file)
    if not isinstance(job, str):
        raise RecipeError(f"'job' must be a job name, got {job!r}", file=file, key="job")
    try:
        check_seed(meta.get("seed", 0), "seed")
    except UserError as err:
        raise err.at(file=file) from None
    imports = meta.get("imports", [])
    import_modules(imports, file=file)
    job_cfg = {"type": job.replace("-", "_")}
    job_cfg.update({k: v for k, v in recipe.items() if k not in META_KEYS})
    return meta, job_cfg


def prepare(recipe_path: str | None, overrides: list[str], job_name: str | None = None):
    """Load the recipe (or start from `{job: job_name}`) and build its job; raises UserError."""
    load_plugins()
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
        if job_name is not None:
            recipe_job = str(recipe.get("job", "")).replace("-", "_")
            if recipe_job and recipe_job != job_name:
                raise RecipeError(f"recipe runs job '{recipe_job}', not '{job_name}'", file=recipe_path, key="job")
            recipe.setdefault("job", job_name)
    else:
        from oneforcing.config.recipe import finish_recipe

        recipe = finish_recipe({"job": job_name}, overrides, "(command line)")
    file = recipe_path or "(command line)"
    meta, job_cfg = split_recipe(recipe, file)
    job = build(job_cfg, JOBS, file=file)
    return recipe, meta, job


def run(recipe_path: str | None, overrides: list[str], job_name: str | None = None) -> int:
    """Run on this process (one rank of many, or alone); returns the exit code."""
    from oneforcing.distributed import init_distributed, setup_logging, teardown_distributed

    rank = int(os.environ.get("RANK", "0") or 0)
    setup_logging(rank)
    try:
        recipe, meta, job = prepare(recipe_path, overrides, job_name)
    except UserError as err:
        return report(err)
    ctx = None
    try:
        ctx = init_distributed(meta.get("seed", 0), recipe, recipe_path)
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
