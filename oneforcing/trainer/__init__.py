"""The trainer: roles -> DeepSpeed engines, the interleaved loop, EMA, checkpoints, export.

This package is the only place that knows about DeepSpeed, devices and precision.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from oneforcing.jobs.base import RunContext, derive_seed
from oneforcing.trainer.checkpoint import CheckpointManager
from oneforcing.trainer.ema import EMA
from oneforcing.trainer.engines import DeepSpeedOptions, FrozenRole, OptimizerConfig, TrainedRole
from oneforcing.trainer.loop import Trainer, WeightedLoss

log = logging.getLogger("oneforcing")

__all__ = ["CheckpointManager", "DeepSpeedOptions", "EMA", "FrozenRole", "OptimizerConfig",
           "TrainedRole", "Trainer", "WeightedLoss", "build_trainer"]


def _build_module(cfg: dict, registry, *, role: str, seed: int, ds: DeepSpeedOptions, lora, ctx: RunContext):
    from oneforcing.registry import build
    from oneforcing.trainer.engines import is_partitioned
    from oneforcing.trainer.zero_init import stream_pretrained_weights, zero_init_context

    # Same random init on every rank (weights that are not loaded from disk must agree).
    torch.manual_seed(derive_seed(seed, "init", role))
    # Trained roles and a frozen role that becomes an inference engine are born partitioned.
    partition = ds.zero_stage == 3 and ds.zero_init and (role != "real_score" or ds.frozen_engine)
    with zero_init_context(ds.to_config(None), partition):
        module = build(cfg, registry, path=f"models.{role}")
    loaded = stream_pretrained_weights(module, ctx.rank)
    if loaded:
        log.info("%s: streamed %d pretrained tensors into %s parameters", role, loaded,
                 "partitioned" if partition else "local")
    if lora is not None:
        from oneforcing.trainer.lora import apply_lora

        apply_lora(module, lora, role)
    if ds.gradient_checkpointing:  # every (sub)model that supports it, e.g. a critic's inner Wan
        for sub in module.modules():
            if hasattr(sub, "gradient_checkpointing"):
                sub.gradient_checkpointing = True
    if any(is_partitioned(p) for p in module.parameters()):
        return module  # zero.Init already placed and cast the shards
    return module.to(device=ctx.device, dtype=ds.dtype)


def build_trainer(job, ctx: RunContext) -> Trainer:
    """Build everything a `train` recipe names (see oneforcing/jobs/train.py for the keys)."""
    from oneforcing.config import dump_recipe
    from oneforcing.loggers import build_loggers
    from oneforcing.jobs.train import ROLES
    from oneforcing.registry import DATASETS, TEXT_ENCODERS, build
    from oneforcing.schedulers.build import build_flow

    run_dir = Path(job.run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", rank=ctx.rank, world_size=ctx.world_size,
                                    keep_last=job.keep_last, barrier=ctx.barrier)
    # A resume that cannot work (broken `latest`, damaged checkpoint, other models) stops the run
    # here, before any model is built or anything is written.
    resume_from = checkpoints.resolve(job.resume)
    if resume_from is not None:
        names = ["generator", *(["critic"] if "critic" in job.models else []),
                 *(["ema"] if job.ema_cfg is not None else []), "trainer"]
        checkpoints.check(resume_from, names, ctx.recipe)
    # Data next (reading shard indices is cheap): a bad dataset, too, fails before models load.
    data = build(job.data, DATASETS, path="data", **_data_kwargs(job.data, ctx))
    ode_data = (build(job.ode_data, DATASETS, path="ode_data", **_data_kwargs(job.ode_data, ctx))
                if job.ode_data is not None else None)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(dump_recipe(ctx.recipe))
    ctx.barrier()

    ds = job.ds
    modules = {role: _build_module(cfg, ROLES[role], role=role, seed=ctx.seed, ds=ds,
                                   lora=job.lora.get(role), ctx=ctx)
               for role, cfg in job.models.items()}
    generator = TrainedRole("generator", modules["generator"], job.optim["generator"], ds)
    critic = TrainedRole("critic", modules["critic"], job.optim["critic"], ds) if "critic" in modules else None
    real_score = FrozenRole("real_score", modules["real_score"], ds) if "real_score" in modules else None

    # The recipe's flow-matching convention, built once and handed to the sampler, the timesteps
    # and (StepContext.scheduler) every loss.
    flow = build_flow(job.scheduler, job.sampler, job.timesteps)
    scheduler, sampler, timesteps = flow.scheduler, flow.sampler, flow.timesteps

    uncond = None
    if job.text_encoder is not None:
        encoder = build(job.text_encoder, TEXT_ENCODERS, path="text_encoder")
        negative = job.negative_prompt if job.negative_prompt is not None else encoder.negative_prompt
        with torch.no_grad():
            uncond = encoder.encode([negative]).to(ctx.device, ds.dtype)
        del encoder

    def losses(key: str) -> list[WeightedLoss]:
        return [WeightedLoss(name, fn, weight) for name, fn, weight in job.built_losses[key]]

    ema = EMA(generator.module, **(job.ema_cfg or {})) if job.ema_cfg is not None else None
    trainer = Trainer(ctx=ctx, generator=generator, critic=critic, real_score=real_score,
                   generator_losses=losses("generator_losses"),
                   critic_losses=losses("critic_losses"), data=data, sampler=sampler,
                   scheduler=scheduler, timesteps=timesteps, uncond_text=uncond, ema=ema,
                   checkpoints=checkpoints, loggers=build_loggers(job.loggers, ctx.rank), steps=job.steps,
                   generator_every=job.generator_every, checkpoint_every=job.checkpoint_every,
                   max_bad_steps=job.max_bad_steps, log_every=job.log_every, config=ctx.recipe,
                   run_dir=str(run_dir), batch_size=ds.micro_batch_size, ode_data=ode_data,
                      dtype=ds.dtype)
    trainer.lora = job.lora
    return trainer


def _data_kwargs(cfg: dict, ctx: RunContext) -> dict:
    """Rank, world size and seed for datasets that take them (the rank-aware loaders do)."""
    import inspect

    from oneforcing.registry import DATASETS

    params = inspect.signature(DATASETS.get(cfg["type"])).parameters
    given = {"rank": ctx.rank, "world_size": ctx.world_size, "seed": ctx.seed, "infinite": True}
    return {k: v for k, v in given.items() if k in params and k not in cfg}
