"""The `train` job: every method (teacher pre-training, ODE init, DMD, One-Forcing, ASD ...) is
this job with different recipe lines. It validates the whole recipe at construction, then builds
the roles, data and losses and hands them to `oneforcing.trainer.Trainer`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from oneforcing.errors import UserError, did_you_mean
from oneforcing.jobs.base import Job, RunContext, missing_path
from oneforcing.registry import (CRITICS, DATASETS, JOBS, LOGGERS, LOSSES, MODELS, SAMPLERS, SCHEDULERS,
                                 TEXT_ENCODERS, TIMESTEP_SAMPLERS, build, validate)

log = logging.getLogger("oneforcing")

ROLES = {"generator": MODELS, "critic": CRITICS, "real_score": MODELS}
LOSS_META = ("weight", "name")  # per-loss keys the trainer reads; the rest go to the loss


def _split_loss(cfg: dict) -> tuple[dict, float, str]:
    body = {k: v for k, v in cfg.items() if k not in LOSS_META}
    return body, float(cfg.get("weight", 1.0)), str(cfg.get("name", cfg.get("type")))


@JOBS.register("train")
class Train(Job):
    """Train with the interleaved generator/critic schedule on DeepSpeed (or one role alone)."""

    def __init__(self, run_dir: str, models: dict, data: dict, steps: int,
                 generator_losses: list[dict] | None = None, critic_losses: list[dict] | None = None,
                 generator_every: int = 5, sampler: dict | None = None,
                 scheduler: dict | None = None, timesteps: dict | None = None,
                 optim: dict | None = None, deepspeed: dict | None = None, ema: dict | None = None,
                 checkpoint_every: int = 50, keep_last: int = 2, resume: str = "auto",
                 text_encoder: dict | None = None, negative_prompt: str | None = None,
                 loggers: list[str | dict] | None = None, export: dict | None = None, max_bad_steps: int = 3,
                 log_every: int = 1, lora: dict | None = None, ode_data: dict | None = None):
        from oneforcing.trainer.engines import DeepSpeedOptions, OptimizerConfig
        from oneforcing.trainer.lora import LoraOptions

        self.run_dir, self.steps, self.resume = run_dir, steps, resume
        self.models = models
        unknown = set(models) - set(ROLES)
        if unknown:
            raise UserError(f"unknown role '{sorted(unknown)[0]}' (roles: {', '.join(ROLES)})", key="models")
        if "generator" not in models:
            raise UserError("needs models.generator", key="models")
        for role, cfg in models.items():
            validate(cfg, ROLES[role], path=f"models.{role}")
        self.data = data
        validate(data, DATASETS, path="data")
        self.ode_data = ode_data  # a second stream (ODE pairs) merged into each batch as ode_*
        if ode_data is not None:
            validate(ode_data, DATASETS, path="ode_data")
        self.generator_losses = generator_losses or []
        self.critic_losses = critic_losses or []
        if not self.generator_losses and not self.critic_losses:
            raise UserError("needs generator_losses and/or critic_losses", key="generator_losses")
        # Losses are small objects: build them now, so that a mistake anywhere inside one (even in
        # a raw sub-config such as a GAN loss's `real:`) stops the run before any model loads.
        self.built_losses: dict[str, list] = {}
        for key, losses in (("generator_losses", self.generator_losses), ("critic_losses", self.critic_losses)):
            self.built_losses[key] = []
            for i, cfg in enumerate(losses):
                if not isinstance(cfg, dict):
                    raise UserError(f"expected a loss config {{type: ...}}, got {cfg!r}", key=f"{key}[{i}]")
                body, weight, name = _split_loss(cfg)
                entry = LOSSES.find(body["type"]) if isinstance(body.get("type"), str) else None
                if entry is not None and getattr(entry.obj, "applies_own_weight", False):
                    # The loss scales only part of itself by `weight` (GAN D with unscaled R1/R2).
                    body, weight = {**body, "weight": weight}, 1.0
                self.built_losses[key].append((name, build(body, LOSSES, path=f"{key}[{i}]"), weight))
        if self.critic_losses and "critic" not in models:
            raise UserError("critic_losses need models.critic", key="critic_losses")
        self.sampler = sampler
        if sampler is not None:
            validate(sampler, SAMPLERS, path="sampler")
        self.scheduler = scheduler or {"type": "flow_match"}  # the flow-matching convention (shift 5 by default)
        validate(self.scheduler, SCHEDULERS, path="scheduler")
        self.timesteps = timesteps or {"type": "shifted_uniform"}
        validate(self.timesteps, TIMESTEP_SAMPLERS, path="timesteps")
        self.text_encoder, self.negative_prompt = text_encoder, negative_prompt
        if text_encoder is not None:
            validate(text_encoder, TEXT_ENCODERS, path="text_encoder")
        optim = optim or {}
        extra_roles = set(optim) - {"generator", "critic"}
        if extra_roles:
            raise UserError(f"optim has no role '{sorted(extra_roles)[0]}' (generator, critic)", key="optim")
        self.optim = {r: _dataclass_from(OptimizerConfig, optim.get(r, {}), f"optim.{r}") for r in ("generator", "critic")}
        self.ds = _dataclass_from(DeepSpeedOptions, deepspeed or {}, "deepspeed")
        self.ema_cfg = ema
        if ema is not None and set(ema) - {"decay", "start_step"}:
            raise UserError(f"unknown key(s) {sorted(set(ema) - {'decay', 'start_step'})} (decay, start_step)", key="ema")
        self.lora = {r: _dataclass_from(LoraOptions, cfg, f"lora.{r}") for r, cfg in (lora or {}).items()}
        if set(self.lora) - {"generator", "critic"}:
            raise UserError("lora roles are generator and critic", key="lora")
        self.checkpoint_every, self.keep_last = checkpoint_every, keep_last
        self.generator_every, self.max_bad_steps, self.log_every = generator_every, max_bad_steps, log_every
        self.loggers = loggers if loggers is not None else ["console", "jsonl"]
        for i, cfg in enumerate(self.loggers):  # names or {type: ...}; built by the trainer
            validate({"type": cfg} if isinstance(cfg, str) else cfg, LOGGERS, path=f"loggers[{i}]")
        for key, value, least in (("steps", steps, 0), ("checkpoint_every", checkpoint_every, 1),
                                  ("log_every", log_every, 1), ("generator_every", generator_every, 1),
                                  ("max_bad_steps", max_bad_steps, 1), ("keep_last", keep_last, 0)):
            if value < least:
                raise UserError(f"must be >= {least}, got {value}", key=key)
        self.export = export
        if export is not None and set(export) - {"dir", "merge_lora"}:
            raise UserError("export keys are dir, merge_lora", key="export")

    def check_paths(self, recipe_file: str | None) -> None:
        """Fail before any engine starts if a weights folder or dataset is missing, and say how
        to get it or where the CPU-sized version of the same recipe is."""
        wanted = [(f"models.{role}.pretrained", cfg.get("pretrained")) for role, cfg in self.models.items()]
        wanted += [(f"{key}.path", cfg.get("path")) for key, cfg in (("data", self.data), ("ode_data", self.ode_data))
                   if isinstance(cfg, dict)]
        for key, path in wanted:
            if isinstance(path, str) and not Path(path).exists():
                raise missing_path(path, key, recipe_file)

    def run(self, ctx: RunContext) -> None:
        from oneforcing.trainer import build_trainer

        self.check_paths(ctx.recipe_file)

        trainer = build_trainer(self, ctx)
        final_step = trainer.fit(self.resume)
        if self.export and final_step >= self.steps:
            from oneforcing.trainer.export import export_generator

            export_generator(trainer, Path(self.export.get("dir", Path(self.run_dir) / "export")),
                             merge_lora=bool(self.export.get("merge_lora", True)))


def _dataclass_from(cls, cfg: dict, path: str):
    import dataclasses

    if not isinstance(cfg, dict):
        raise UserError(f"expected a mapping, got {cfg!r}", key=path)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in cfg:
        if k not in names:
            hint = did_you_mean(k, names)
            raise UserError(f"unknown key '{k}'.{hint} Keys: {', '.join(names)}", key=f"{path}.{k}")
    from oneforcing.registry import check_kwargs

    kwargs = check_kwargs(cls, dict(cfg), what=path, path=path)
    return cls(**kwargs)
