"""What every job gets: the run context (oneforcing.runtime, re-exported here), the Job protocol,
and `prepare` (a recipe file -> its built job), shared by the runner and by the jobs that run other
recipes (pipeline, toy_report).

A job is a class registered in `JOBS`. The recipe's keys (all but the meta keys `job`, `seed`,
`imports`, `_base_` and `_private` ones) are its constructor's keyword arguments, checked
strictly against its signature. `run(ctx)` does the work; it runs on every rank.
"""

from __future__ import annotations

from pathlib import Path

from oneforcing.config import load_recipe
from oneforcing.config.recipe import finish_recipe
from oneforcing.errors import RecipeError, UserError
from oneforcing.registry import JOBS, build, import_modules, load_plugins
from oneforcing.runtime import RunContext, check_seed, derive_seed, env_int

__all__ = ["META_KEYS", "Job", "RunContext", "check_seed", "derive_seed", "env_int", "missing_path", "prepare",
           "split_recipe"]


def missing_path(path: str, key: str, recipe_file: str | None) -> UserError:
    """The error for a recipe path that does not exist: how to get it, and the CPU-sized twin of
    the same recipe (recipes/toy/<name>.yaml) when there is one."""
    hint = ""
    if recipe_file:
        toy = Path(recipe_file).parent / "toy" / Path(recipe_file).name
        if toy.exists() and toy.resolve() != Path(recipe_file).resolve():
            hint = f"; to run this method on a CPU without Wan weights: python recipes/run.py {toy}"
    return UserError(f"'{path}' does not exist (download it, produce it with the recipe that writes it, "
                     f"or override the path; see README 'Real runs'){hint}", key=key)


class Job:
    """Base class for registered jobs (optional: any class with `run(ctx)` will do)."""

    def run(self, ctx: RunContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# Top-level recipe keys of the run itself (the runner reads them); every other key goes to the job.
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
        check_seed(meta.get("seed", RunContext.seed), "seed")
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
        recipe = finish_recipe({"job": job_name}, overrides, "(command line)")
    file = recipe_path or "(command line)"
    meta, job_cfg = split_recipe(recipe, file)
    job = build(job_cfg, JOBS, file=file)
    return recipe, meta, job
