"""The `pipeline` job: run several recipes in order, in one process (the demo, the toy chain).

    job: pipeline
    stages:
      - {recipe: data.yaml, skip_if_exists: data/toy/train/index.json}
      - {recipe: one_forcing_framewise.yaml, overrides: [steps=100]}

Stage recipes are relative to the pipeline recipe. Every stage is loaded and validated before
the first one runs, so a typo in stage 4 fails in a second, not after an hour of stage 3.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext, prepare
from oneforcing.registry import JOBS

log = logging.getLogger("oneforcing")
STAGE_KEYS = {"recipe", "overrides", "skip_if_exists", "name"}


@JOBS.register("pipeline")
class Pipeline(Job):
    """Run a list of recipes in order (stages may be skipped when their output exists)."""

    def __init__(self, stages: list[dict]):
        if not stages:
            raise UserError("needs at least one stage", key="stages")
        for i, stage in enumerate(stages):
            if not isinstance(stage, dict) or "recipe" not in stage:
                raise UserError("each stage is {recipe: FILE, overrides: [k=v ...], skip_if_exists: PATH}",
                                key=f"stages[{i}]")
            extra = set(stage) - STAGE_KEYS
            if extra:
                raise UserError(f"unknown key '{sorted(extra)[0]}' ({', '.join(sorted(STAGE_KEYS))})",
                                key=f"stages[{i}]")
        self.stages = stages

    def prepare_stages(self, base: Path) -> list[tuple]:
        """Load and build every stage's recipe (stage recipes are relative to `base`); raises the
        first UserError under its `stages[i]` key."""
        prepared = []
        for i, stage in enumerate(self.stages):
            path = base / stage["recipe"]
            try:
                recipe, meta, job = prepare(str(path), list(stage.get("overrides", [])))
            except UserError as err:
                raise UserError(f"{err}", key=f"stages[{i}]") from None
            prepared.append((stage, path, recipe, meta, job))
        return prepared

    def run(self, ctx: RunContext) -> None:
        base = Path(ctx.recipe_file).parent if ctx.recipe_file else Path(".")
        prepared = self.prepare_stages(base)  # validate everything first
        for i, (stage, path, recipe, meta, job) in enumerate(prepared):
            name = stage.get("name", path.stem)
            marker = stage.get("skip_if_exists")
            if marker and Path(marker).exists():
                log.info("pipeline %d/%d %s: skipped (%s exists)", i + 1, len(prepared), name, marker)
                continue
            log.info("pipeline %d/%d %s: %s", i + 1, len(prepared), name, path)
            t0 = time.perf_counter()
            stage_ctx = RunContext(recipe=recipe, recipe_file=str(path), seed=meta.get("seed", ctx.seed),
                                   rank=ctx.rank, world_size=ctx.world_size, local_rank=ctx.local_rank,
                                   device=ctx.device, launcher=ctx.launcher)
            job.run(stage_ctx)
            ctx.barrier()
            log.info("pipeline %d/%d %s: done in %.0f s", i + 1, len(prepared), name, time.perf_counter() - t0)
