"""The `train` job: every method (teacher pre-training, ODE init, DMD, One-Forcing, ASD ...) is
this job with different recipe lines. A thin adapter: the recipe's keys become a typed
`TrainConfig` (oneforcing/trainer/config.py declares and checks them) at construction, so
`oneforcing show` catches every mistake; `run` checks paths and hands the config to the trainer."""

from __future__ import annotations

from pathlib import Path

from oneforcing.jobs.base import Job, RunContext, missing_path
from oneforcing.registry import JOBS
from oneforcing.trainer import build_trainer
from oneforcing.trainer.config import TrainConfig
from oneforcing.trainer.export import export_generator


@JOBS.register("train")
class Train(Job):
    """Train with the interleaved generator/critic schedule on DeepSpeed (or one role alone).
    Recipe keys: see `oneforcing.trainer.config` (run_dir, models, data, steps, losses, optim,
    deepspeed, lora, ema, export, loggers, ...)."""

    def __init__(self, **recipe):
        self.config = TrainConfig.from_recipe(recipe)

    def check_paths(self, recipe_file: str | None) -> None:
        """Fail before any engine starts if a weights folder or dataset is missing, and say how
        to get it or where the CPU-sized version of the same recipe is."""
        cfg = self.config
        wanted = [(f"models.{role}.pretrained", m.get("pretrained")) for role, m in cfg.models.items()]
        wanted += [(f"{key}.path", d.get("path")) for key, d in (("data", cfg.data), ("ode_data", cfg.ode_data))
                   if isinstance(d, dict)]
        for key, path in wanted:
            if isinstance(path, str) and not Path(path).exists():
                raise missing_path(path, key, recipe_file)

    def run(self, ctx: RunContext) -> None:
        self.check_paths(ctx.recipe_file)
        cfg = self.config
        trainer = build_trainer(cfg, ctx)
        final_step = trainer.fit()
        if cfg.export is not None and final_step >= cfg.steps:
            export_generator(trainer, Path(cfg.export.dir or Path(cfg.run_dir) / "export"),
                             merge_lora=cfg.export.merge_lora,
                             inference_weights=cfg.export.inference_weights)
