"""The trainer: typed config -> placed models -> DeepSpeed engines, the interleaved loop, EMA,
checkpoints, export.

This package is the only place that knows about DeepSpeed, devices and precision:
config.py (the recipe as dataclasses) -> placement.py (build, load, shard, cast a role's model)
-> engines.py (DeepSpeed engines) -> loop.py (the schedule). It imports `oneforcing.runtime`,
never `oneforcing.jobs`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from oneforcing.config import dump_recipe
from oneforcing.loggers import build_loggers
from oneforcing.registry import DATASETS, TEXT_ENCODERS, build, declared
from oneforcing.runtime import RunContext
from oneforcing.schedulers.build import build_flow
from oneforcing.trainer.checkpoint import CheckpointManager
from oneforcing.trainer.config import (ROLES, DeepSpeedOptions, EMAConfig, OptimizerConfig, Schedule, TrainConfig,
                                       WeightedLoss)
from oneforcing.trainer.ema import EMA
from oneforcing.trainer.engines import DeepSpeedPlan, FrozenRole, TrainedRole
from oneforcing.trainer.loop import Trainer, state_names
from oneforcing.trainer.placement import build_role_module

log = logging.getLogger("oneforcing")

__all__ = ["CheckpointManager", "DeepSpeedOptions", "DeepSpeedPlan", "EMA", "EMAConfig", "FrozenRole",
           "OptimizerConfig", "Schedule", "TrainConfig", "TrainedRole", "Trainer", "WeightedLoss", "build_trainer"]


def build_trainer(cfg: TrainConfig, ctx: RunContext) -> Trainer:
    """Build everything a `TrainConfig` names, cheapest and most likely to fail first. The run
    context gives what the config leaves to the launch: ranks (the world size resolves
    `deepspeed.zero_stage: auto`), device, seed."""
    run_dir = Path(cfg.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", rank=ctx.rank, world_size=ctx.world_size,
                                    keep_last=cfg.schedule.keep_last, barrier=ctx.barrier)
    # A resume that cannot work (broken `latest`, damaged checkpoint, other models) stops the run
    # here, before any model is built or anything is written.
    resume_from = checkpoints.resume_point(cfg.schedule.resume, state_names(cfg), ctx.recipe)
    # Data next (reading shard indices is cheap): a bad dataset, too, fails before models load.
    data = build(cfg.data, DATASETS, path="data", **_data_kwargs(cfg.data, ctx))
    ode_data = (build(cfg.ode_data, DATASETS, path="ode_data", **_data_kwargs(cfg.ode_data, ctx))
                if cfg.ode_data is not None else None)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(dump_recipe(ctx.recipe))
    ctx.barrier()

    # The recipe's flow-matching convention, built once and handed to the models that declare it,
    # the sampler, the timesteps and (StepContext.scheduler) every loss.
    flow = build_flow(cfg.scheduler, cfg.sampler, cfg.timesteps)
    scheduler, sampler, timesteps = flow.scheduler, flow.sampler, flow.timesteps

    plan = DeepSpeedPlan.resolve(cfg.deepspeed, ctx.world_size)
    modules = {role: build_role_module(m, ROLES[role], role=role, plan=plan, lora=cfg.lora.get(role), ctx=ctx,
                                       scheduler=scheduler)
               for role, m in cfg.models.items()}
    generator = TrainedRole("generator", modules["generator"], cfg.optim["generator"], plan)
    critic = TrainedRole("critic", modules["critic"], cfg.optim["critic"], plan) if "critic" in modules else None
    real_score = FrozenRole("real_score", modules["real_score"], plan) if "real_score" in modules else None

    uncond = None
    if cfg.text_encoder is not None:
        encoder = build(cfg.text_encoder, TEXT_ENCODERS, path="text_encoder")
        negative = cfg.negative_prompt if cfg.negative_prompt is not None else encoder.negative_prompt
        with torch.no_grad():
            uncond = encoder.encode([negative]).to(ctx.device, cfg.deepspeed.dtype)
        del encoder

    ema = (EMA(generator.module, decay=cfg.ema.decay, start_step=cfg.ema.start_step)
           if cfg.ema is not None else None)
    return Trainer(cfg, ctx, generator=generator, critic=critic, real_score=real_score, data=data,
                   ode_data=ode_data, sampler=sampler, scheduler=scheduler, timesteps=timesteps,
                   uncond_text=uncond, ema=ema, checkpoints=checkpoints, resume_from=resume_from,
                   loggers=build_loggers(cfg.loggers, ctx.rank))


def _data_kwargs(cfg: dict, ctx: RunContext) -> dict:
    """Rank, world size, seed and `infinite` for datasets that declare them (the rank-aware loaders
    do), unless the recipe sets them."""
    given = declared(cfg, DATASETS, rank=ctx.rank, world_size=ctx.world_size, seed=ctx.seed, infinite=True)
    return {k: v for k, v in given.items() if k not in cfg}
