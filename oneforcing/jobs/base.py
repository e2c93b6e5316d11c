"""What every job gets: the run context (oneforcing.runtime, re-exported here) and the Job protocol.

A job is a class registered in `JOBS`. The recipe's keys (all but the meta keys `job`, `seed`,
`imports`, `_base_` and `_private` ones) are its constructor's keyword arguments, checked
strictly against its signature. `run(ctx)` does the work; it runs on every rank.
"""

from __future__ import annotations

from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.runtime import RunContext, check_seed, derive_seed, env_int

__all__ = ["Job", "RunContext", "check_seed", "derive_seed", "env_int", "missing_path"]  # runtime's names, for jobs


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
